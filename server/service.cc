#include "server/service.h"

#include <memory>
#include <mutex>
#include <random>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/status_macros.h"

namespace fwp::server {

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

std::string GrpcCodeName(grpc::StatusCode code) {
  // gRPC's codes are Abseil's, number for number.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

namespace {

v1::Tier ToProto(Tier tier) {
  switch (tier) {
    case Tier::kDevice: return v1::TIER_DEVICE;
    case Tier::kHost: return v1::TIER_HOST;
    case Tier::kDisk: return v1::TIER_DISK;
  }
  return v1::TIER_UNSPECIFIED;
}

void ToProto(const SessionInfo& info, v1::SessionInfo* out) {
  out->set_session_id(info.id);
  out->set_tokens(info.tokens);
  out->set_tier(ToProto(info.tier));
  out->set_state_bytes(info.state_bytes);
  out->set_busy(info.busy);
}

void ToProto(const Event& e, v1::GenerateResponse* out) {
  out->Clear();
  out->set_session_id(e.session_id);
  for (int32_t t : e.tokens) out->add_token_ids(t);
  out->set_text(e.text);
  for (const auto& lp : e.logprobs) {
    auto* p = out->add_logprobs();
    p->set_id(lp.id);
    p->set_logprob(lp.logprob);
  }
  for (const auto& lp : e.top_logprobs) {
    auto* p = out->add_top_logprobs();
    p->set_id(lp.id);
    p->set_logprob(lp.logprob);
  }
  out->set_finished(e.finished);
  out->set_finish_reason(static_cast<v1::FinishReason>(e.reason));
  if (e.finished) {
    auto* u = out->mutable_usage();
    u->set_prompt_tokens(e.usage.prompt_tokens);
    u->set_generated_tokens(e.usage.generated_tokens);
    u->set_time_to_first_token_s(e.usage.time_to_first_token_s);
    u->set_total_time_s(e.usage.total_time_s);
    u->set_session_tokens(e.usage.session_tokens);
  }
}

uint64_t RandomSeed() {
  static thread_local std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

// Writes a Stream's events to a gRPC stream, one at a time. The engine's
// notify and gRPC's write completions both call Pump under one lock; the
// lock outlives the reactor (shared with the notify closure), so a late
// notify after the call is done finds no reactor and does nothing.
struct PumpState {
  std::recursive_mutex mutex;
  std::function<void()> pump;  // cleared when the reactor is done
};

}  // namespace

// ---- Generate ----------------------------------------------------------------

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  GenerateReactor(FwpService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), stream_(std::make_shared<Stream>()),
        pump_(std::make_shared<PumpState>()) {
    pump_->pump = [this] { PumpLocked(); };
    stream_->SetNotify([pump = pump_] {
      std::lock_guard<std::recursive_mutex> lock(pump->mutex);
      if (pump->pump) pump->pump();
    });
  }

  void Start(const v1::GenerateRequest& request) {
    absl::Status status = Submit(request);
    if (!status.ok()) {
      std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
      FinishWith(ToGrpc(status));
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
    writing_ = false;
    if (!ok) cancelled_ = true;  // the client is gone
    PumpLocked();
  }

  // The client cancelled or the deadline passed: the engine frees the slot
  // at its next step; the call finishes now (or when the write in flight
  // completes).
  void OnCancel() override {
    stream_->Cancel();
    std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
    cancelled_ = true;
    PumpLocked();
  }

  void OnDone() override {
    {
      std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
      pump_->pump = nullptr;
    }
    stream_->Cancel();  // if the engine still runs it, free its slot
    stream_->SetNotify(nullptr);
    service_.metrics().CountRequest("Generate", GrpcCodeName(final_code_));
    delete this;
  }

 private:
  absl::Status Submit(const v1::GenerateRequest& request) {
    FWP_RETURN_IF_ERROR(service_.CheckSize(request));
    FWP_ASSIGN_OR_RETURN(std::string principal, service_.Authenticate(*context_));
    Engine::GenerateJob job;
    job.principal = std::move(principal);
    FWP_ASSIGN_OR_RETURN(job.prompt, service_.PromptTokens(request.prompt(), "prompt"));
    FWP_ASSIGN_OR_RETURN(job.params,
                         service_.Params(request.sampling(), request.stopping(),
                                         request.logprobs(), request.top_logprobs()));
    job.session_id = request.session_id();
    job.keep_session = request.keep_session();
    if (!job.session_id.empty() && job.keep_session) {
      return absl::InvalidArgumentError(
          "keep_session applies to new sessions; a session_id given is always kept");
    }
    job.out = stream_;
    return service_.engine().Submit(std::move(job));
  }

  void PumpLocked() {
    if (writing_ || done_) return;
    if (cancelled_) {
      stream_->Cancel();
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    std::optional<Event> event = stream_->PopMerged();
    if (!event) return;
    if (!event->status.ok()) {
      FinishWith(ToGrpc(event->status));
      return;
    }
    ToProto(*event, &response_);
    writing_ = true;
    if (event->finished) {
      done_ = true;
      final_code_ = grpc::StatusCode::OK;
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    } else {
      StartWrite(&response_);
    }
  }

  void FinishWith(const grpc::Status& status) {
    if (done_) return;
    done_ = true;
    final_code_ = status.error_code();
    Finish(status);
  }

  FwpService& service_;
  grpc::CallbackServerContext* context_;
  std::shared_ptr<Stream> stream_;
  std::shared_ptr<PumpState> pump_;
  v1::GenerateResponse response_;
  bool writing_ = false;
  bool done_ = false;
  bool cancelled_ = false;
  grpc::StatusCode final_code_ = grpc::StatusCode::CANCELLED;
};

grpc::ServerWriteReactor<v1::GenerateResponse>* FwpService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto* reactor = new GenerateReactor(*this, context);
  reactor->Start(*request);
  return reactor;
}

// ---- Chat --------------------------------------------------------------------

class ChatReactor final : public grpc::ServerBidiReactor<v1::ChatRequest, v1::GenerateResponse> {
 public:
  ChatReactor(FwpService& service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), pump_(std::make_shared<PumpState>()) {
    pump_->pump = [this] { PumpLocked(); };
    auto principal = service_.Authenticate(*context_);
    if (!principal.ok()) {
      std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
      FinishWith(ToGrpc(principal.status()));
      return;
    }
    principal_ = *principal;
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
    if (done_) return;  // finished (cancelled) while the read was pending
    if (!ok) {  // the client closed its side: done once the turn ends
      reads_closed_ = true;
      if (!turn_running_) FinishWith(grpc::Status::OK);
      return;
    }
    absl::Status status = StartTurn();
    if (!status.ok()) FinishWith(ToGrpc(status));
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
    writing_ = false;
    if (!ok) {
      if (stream_) stream_->Cancel();
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
      return;
    }
    if (turn_finished_written_) {
      turn_finished_written_ = false;
      turn_running_ = false;
      if (reads_closed_) {
        FinishWith(grpc::Status::OK);
      } else {
        StartRead(&request_);
      }
      return;
    }
    PumpLocked();
  }

  void OnCancel() override {
    std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
    if (stream_) stream_->Cancel();
    cancelled_ = true;
    if (!writing_) FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled"));
  }

  void OnDone() override {
    {
      std::lock_guard<std::recursive_mutex> lock(pump_->mutex);
      pump_->pump = nullptr;
      if (stream_) {
        stream_->Cancel();
        stream_->SetNotify(nullptr);
        // The first turn may end before its first event named the session.
        if (session_id_.empty()) session_id_ = stream_->session_id();
      }
    }
    if (!session_id_.empty() && !keep_session_) {
      // Deleted once any turn still running has let go of it.
      service_.engine().ReleaseSession(principal_, session_id_);
    }
    service_.metrics().CountRequest("Chat", GrpcCodeName(final_code_));
    delete this;
  }

 private:
  absl::Status StartTurn() {
    FWP_RETURN_IF_ERROR(service_.CheckSize(request_));
    Engine::GenerateJob job;
    job.principal = principal_;
    FWP_ASSIGN_OR_RETURN(job.prompt, service_.PromptTokens(request_.prompt(), "prompt"));
    FWP_ASSIGN_OR_RETURN(job.params,
                         service_.Params(request_.sampling(), request_.stopping(),
                                         request_.logprobs(), request_.top_logprobs()));
    if (first_turn_) {
      first_turn_ = false;
      if (!request_.session_id().empty()) {
        session_id_ = request_.session_id();
        keep_session_ = true;  // the caller's session outlives the stream
      } else {
        keep_session_ = request_.keep_session();
      }
    } else if (!request_.session_id().empty() && request_.session_id() != session_id_) {
      return absl::InvalidArgumentError(
          "session_id may only be set in a chat stream's first turn");
    }
    job.session_id = session_id_;
    job.keep_session = session_id_.empty();  // the stream's session, deleted at its end
    job.with_stream = job.keep_session && !keep_session_;  // (unless the client keeps it)
    stream_ = std::make_shared<Stream>();
    stream_->SetNotify([pump = pump_] {
      std::lock_guard<std::recursive_mutex> lock(pump->mutex);
      if (pump->pump) pump->pump();
    });
    job.out = stream_;
    turn_running_ = true;
    return service_.engine().Submit(std::move(job));
  }

  void PumpLocked() {
    if (writing_ || done_ || !stream_) return;
    std::optional<Event> event = stream_->PopMerged();
    if (!event) return;
    if (!event->status.ok()) {
      FinishWith(ToGrpc(event->status));
      return;
    }
    if (session_id_.empty() && !event->session_id.empty()) session_id_ = event->session_id;
    ToProto(*event, &response_);
    writing_ = true;
    turn_finished_written_ = event->finished;
    StartWrite(&response_);
  }

  void FinishWith(const grpc::Status& status) {
    if (done_) return;
    done_ = true;
    final_code_ = status.error_code();
    Finish(status);
  }

  FwpService& service_;
  grpc::CallbackServerContext* context_;
  std::shared_ptr<PumpState> pump_;
  std::shared_ptr<Stream> stream_;  // the current turn's
  std::string principal_;
  std::string session_id_;
  bool keep_session_ = false;
  bool first_turn_ = true;
  bool turn_running_ = false;
  bool turn_finished_written_ = false;
  bool reads_closed_ = false;
  bool cancelled_ = false;
  bool writing_ = false;
  bool done_ = false;
  v1::ChatRequest request_;
  v1::GenerateResponse response_;
  grpc::StatusCode final_code_ = grpc::StatusCode::CANCELLED;
};

grpc::ServerBidiReactor<v1::ChatRequest, v1::GenerateResponse>* FwpService::Chat(
    grpc::CallbackServerContext* context) {
  return new ChatReactor(*this, context);
}

// ---- Shared conversions ------------------------------------------------------

FwpService::FwpService(const ServiceOptions& options, Engine& engine,
                       const Tokenizer& tokenizer, int32_t vocab,
                       ModelDescription description, Metrics& metrics)
    : options_(options),
      engine_(engine),
      tokenizer_(tokenizer),
      vocab_(vocab),
      description_(std::move(description)),
      metrics_(metrics) {}

absl::StatusOr<std::string> FwpService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (options_.tokens.empty()) return std::string();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) {
    return absl::UnauthenticatedError(
        "this server requires a bearer token: send metadata \"authorization: Bearer <token>\"");
  }
  std::string value(it->second.data(), it->second.size());
  constexpr std::string_view kBearer = "Bearer ";
  if (value.compare(0, kBearer.size(), kBearer) != 0) {
    return absl::UnauthenticatedError("the authorization metadata must be \"Bearer <token>\"");
  }
  auto found = options_.tokens.find(value.substr(kBearer.size()));
  if (found == options_.tokens.end()) {
    return absl::UnauthenticatedError("unknown bearer token");
  }
  return found->second;
}

absl::Status FwpService::CheckSize(const google::protobuf::Message& request) const {
  const size_t bytes = request.ByteSizeLong();
  if (static_cast<int64_t>(bytes) > options_.max_request_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("the request is ", bytes,
                                                   " bytes; this server accepts at most ",
                                                   options_.max_request_bytes,
                                                   " (--max_request_bytes)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> FwpService::PromptTokens(const v1::Prompt& prompt,
                                                              const char* field) const {
  std::vector<int32_t> ids;
  switch (prompt.kind_case()) {
    case v1::Prompt::kText:
      ids = tokenizer_.Encode(prompt.text());
      if (ids.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".text is empty"));
      }
      break;
    case v1::Prompt::kIds:
      ids.assign(prompt.ids().ids().begin(), prompt.ids().ids().end());
      if (ids.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ".ids is empty"));
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, " is empty: set ", field, ".text or ", field, ".ids"));
  }
  const std::string name = absl::StrCat(field, prompt.has_text() ? ".text" : ".ids");
  FWP_RETURN_IF_ERROR(ValidatePrompt(ids, vocab_, engine_.options().max_prompt_tokens,
                                     name.c_str()));
  return ids;
}

absl::StatusOr<GenerationParams> FwpService::Params(const v1::SamplingParams& s,
                                                    const v1::StoppingParams& stop,
                                                    bool logprobs,
                                                    int32_t top_logprobs) const {
  GenerationParams p;
  p.sampling.temperature = s.temperature();
  p.sampling.top_k = s.top_k();
  p.sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  p.sampling.min_p = s.min_p();
  p.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  p.presence_penalty = s.presence_penalty();
  p.frequency_penalty = s.frequency_penalty();
  p.seed = s.has_seed() ? s.seed() : RandomSeed();
  p.max_tokens = stop.has_max_tokens() ? stop.max_tokens() : options_.default_max_tokens;
  p.stop.assign(stop.stop().begin(), stop.stop().end());
  p.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  p.ignore_eos = stop.ignore_eos();
  p.logprobs = logprobs;
  p.top_logprobs = top_logprobs;
  FWP_RETURN_IF_ERROR(ValidateGenerationParams(p, engine_.options().limits, vocab_));
  return p;
}

// ---- Unary calls -------------------------------------------------------------

grpc::ServerUnaryReactor* FwpService::Unary(grpc::CallbackServerContext* context,
                                            const char* method, absl::Status status) {
  auto* reactor = context->DefaultReactor();
  metrics_.CountRequest(method, GrpcCodeName(ToGrpc(status).error_code()));
  reactor->Finish(ToGrpc(status));
  return reactor;
}

namespace {

// Finishes `reactor` from the engine thread, counting the call.
template <typename Fill>
auto Completion(Metrics& metrics, const char* method, grpc::ServerUnaryReactor* reactor,
                Fill fill) {
  return [&metrics, method, reactor, fill](auto result) {
    absl::Status status = result.ok() ? fill(*result) : result.status();
    metrics.CountRequest(method, GrpcCodeName(ToGrpc(status).error_code()));
    reactor->Finish(ToGrpc(status));
  };
}

// The same for the calls that answer with a SessionInfo.
auto InfoCompletion(Metrics& metrics, const char* method, grpc::ServerUnaryReactor* reactor,
                    v1::SessionInfo* response) {
  return Completion(metrics, method, reactor, [response](const SessionInfo& info) {
    ToProto(info, response);
    return absl::OkStatus();
  });
}

}  // namespace

grpc::ServerUnaryReactor* FwpService::CreateSession(grpc::CallbackServerContext* context,
                                                    const v1::CreateSessionRequest* request,
                                                    v1::SessionInfo* response) {
  if (auto s = CheckSize(*request); !s.ok()) return Unary(context, "CreateSession", s);
  auto principal = Authenticate(*context);
  if (!principal.ok()) return Unary(context, "CreateSession", principal.status());
  std::vector<int32_t> prompt;
  if (request->has_prompt()) {
    auto tokens = PromptTokens(request->prompt(), "prompt");
    if (!tokens.ok()) return Unary(context, "CreateSession", tokens.status());
    prompt = std::move(*tokens);
  }
  auto* reactor = context->DefaultReactor();
  engine_.CreateSession(*principal, request->session_id(), std::move(prompt),
                        InfoCompletion(metrics_, "CreateSession", reactor, response),
                        [context] { return context->IsCancelled(); });
  return reactor;
}

grpc::ServerUnaryReactor* FwpService::ForkSession(grpc::CallbackServerContext* context,
                                                  const v1::ForkSessionRequest* request,
                                                  v1::SessionInfo* response) {
  auto principal = Authenticate(*context);
  if (!principal.ok()) return Unary(context, "ForkSession", principal.status());
  auto* reactor = context->DefaultReactor();
  engine_.ForkSession(*principal, request->session_id(),
                      InfoCompletion(metrics_, "ForkSession", reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* FwpService::GetSession(grpc::CallbackServerContext* context,
                                                 const v1::GetSessionRequest* request,
                                                 v1::SessionInfo* response) {
  auto principal = Authenticate(*context);
  if (!principal.ok()) return Unary(context, "GetSession", principal.status());
  auto* reactor = context->DefaultReactor();
  engine_.GetSession(*principal, request->session_id(),
                     InfoCompletion(metrics_, "GetSession", reactor, response));
  return reactor;
}

grpc::ServerUnaryReactor* FwpService::DeleteSession(grpc::CallbackServerContext* context,
                                                    const v1::DeleteSessionRequest* request,
                                                    v1::DeleteSessionResponse*) {
  auto principal = Authenticate(*context);
  if (!principal.ok()) return Unary(context, "DeleteSession", principal.status());
  auto* reactor = context->DefaultReactor();
  Metrics& metrics = metrics_;
  engine_.DeleteSession(*principal, request->session_id(),
                        [&metrics, reactor](absl::Status status) {
                          metrics.CountRequest("DeleteSession",
                                               GrpcCodeName(ToGrpc(status).error_code()));
                          reactor->Finish(ToGrpc(status));
                        });
  return reactor;
}

grpc::ServerUnaryReactor* FwpService::Tokenize(grpc::CallbackServerContext* context,
                                               const v1::TokenizeRequest* request,
                                               v1::TokenizeResponse* response) {
  absl::Status status = CheckSize(*request);
  if (status.ok()) status = Authenticate(*context).status();
  if (status.ok()) {
    const std::vector<int32_t> ids = tokenizer_.Encode(request->text());
    for (int32_t id : ids) {
      response->add_ids(id);
      response->add_pieces(tokenizer_.Decode({&id, 1}));
    }
  }
  return Unary(context, "Tokenize", status);
}

grpc::ServerUnaryReactor* FwpService::Detokenize(grpc::CallbackServerContext* context,
                                                 const v1::DetokenizeRequest* request,
                                                 v1::DetokenizeResponse* response) {
  absl::Status status = CheckSize(*request);
  if (status.ok()) status = Authenticate(*context).status();
  std::vector<int32_t> ids(request->ids().begin(), request->ids().end());
  if (status.ok()) {
    status = ValidatePrompt(ids, vocab_, INT64_MAX, "ids", /*allow_empty=*/true);
  }
  if (status.ok()) response->set_text(tokenizer_.Decode(ids));
  return Unary(context, "Detokenize", status);
}

grpc::ServerUnaryReactor* FwpService::ModelInfo(grpc::CallbackServerContext* context,
                                                const v1::ModelInfoRequest*,
                                                v1::ModelInfoResponse* response) {
  absl::Status status = Authenticate(*context).status();
  if (status.ok()) {
    response->set_config_json(description_.config_json);
    response->set_parameters(description_.parameters);
    response->set_state_bytes(engine_.state_bytes());
    response->set_backend(description_.backend);
    response->set_vocab_size(vocab_);
    response->set_eos_id(tokenizer_.eos_id());
    response->set_bos_id(tokenizer_.bos_id());
    response->set_state_slots(engine_.options().slots);
    response->set_max_tokens_limit(engine_.options().limits.max_tokens);
    response->set_fingerprint(description_.fingerprint);
    response->set_replica(description_.replica);
  }
  return Unary(context, "ModelInfo", status);
}

grpc::ServerUnaryReactor* FwpService::Score(grpc::CallbackServerContext* context,
                                            const v1::ScoreRequest* request,
                                            v1::ScoreResponse* response) {
  absl::Status status = CheckSize(*request);
  auto principal = Authenticate(*context);
  if (status.ok()) status = principal.status();
  absl::StatusOr<std::vector<int32_t>> tokens = std::vector<int32_t>();
  if (status.ok()) tokens = PromptTokens(request->prompt(), "prompt");
  if (status.ok()) status = tokens.status();
  if (!status.ok()) return Unary(context, "Score", status);
  auto* reactor = context->DefaultReactor();
  engine_.Score(*principal, request->session_id(), std::move(*tokens),
                Completion(metrics_, "Score", reactor, [response](const ScoreResult& r) {
                  for (const auto& t : r.tokens) {
                    auto* p = response->add_tokens();
                    p->set_id(t.id);
                    p->set_logprob(t.logprob);
                  }
                  response->set_logprob(r.logprob);
                  response->set_scored_tokens(static_cast<int32_t>(r.tokens.size()));
                  response->set_perplexity(
                      r.tokens.empty() ? 0.0 : std::exp(-r.logprob / r.tokens.size()));
                  return absl::OkStatus();
                }),
                [context] { return context->IsCancelled(); });
  return reactor;
}

}  // namespace fwp::server
