#include "server/http_gateway.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <mutex>
#include <optional>
#include <random>
#include <thread>

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <google/protobuf/util/json_util.h>
#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "fwp/v1/fwp.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "nlohmann/json.hpp"
#include "server/service.h"

namespace fwp::server {

using nlohmann::json;

namespace {

// google.rpc's usual mapping of gRPC codes to HTTP statuses.
int HttpStatus(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return 200;
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::FAILED_PRECONDITION:
    case grpc::StatusCode::OUT_OF_RANGE: return 400;
    case grpc::StatusCode::UNAUTHENTICATED: return 401;
    case grpc::StatusCode::PERMISSION_DENIED: return 403;
    case grpc::StatusCode::NOT_FOUND: return 404;
    case grpc::StatusCode::ALREADY_EXISTS:
    case grpc::StatusCode::ABORTED: return 409;
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return 429;
    case grpc::StatusCode::CANCELLED: return 499;
    case grpc::StatusCode::UNIMPLEMENTED: return 501;
    case grpc::StatusCode::UNAVAILABLE: return 503;
    case grpc::StatusCode::DEADLINE_EXCEEDED: return 504;
    default: return 500;
  }
}

std::string ErrorJson(const grpc::Status& status) {
  // The message may quote the request's bytes, which need not be UTF-8.
  return json{{"error",
               {{"code", HttpStatus(status.error_code())},
                {"status", GrpcCodeName(status.error_code())},
                {"message", status.error_message()}}}}
      .dump(-1, ' ', false, json::error_handler_t::replace);
}

void SetError(httplib::Response& res, const grpc::Status& status) {
  res.status = HttpStatus(status.error_code());
  res.set_content(ErrorJson(status) + "\n", "application/json");
}

grpc::Status BadRequest(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

std::string ToJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(message, &out, options);
  return out;
}

// The request body as a message of type M (an empty body: the default one).
template <typename M>
grpc::Status FromJson(const httplib::Request& req, M* message) {
  if (req.body.empty()) return grpc::Status::OK;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  const auto status = google::protobuf::util::JsonStringToMessage(req.body, message, options);
  if (!status.ok()) {
    return BadRequest(absl::StrCat("the body is not a ", M::descriptor()->full_name(),
                                   " in JSON: ", status.message().as_string()));
  }
  return grpc::Status::OK;
}

// A call's context from its HTTP request: the headers the service reads
// (authorization, and x-session-id for load balancers) and X-Timeout-Ms.
grpc::Status Prepare(const httplib::Request& req, grpc::ClientContext* context) {
  for (const char* header : {"authorization", "x-session-id"}) {
    if (!req.has_header(header)) continue;
    const std::string value = req.get_header_value(header);
    // gRPC takes printable ASCII only in metadata (it aborts on anything
    // else), and nothing longer is a token or a session id.
    const bool printable = std::all_of(value.begin(), value.end(),
                                       [](unsigned char c) { return c >= 0x20 && c <= 0x7e; });
    if (!printable || value.size() > 4096) {
      return BadRequest(absl::StrCat("the ", header, " header must be printable ASCII of at most "
                                     "4096 bytes"));
    }
    context->AddMetadata(header, value);
  }
  if (req.has_header("x-timeout-ms")) {
    int64_t ms = 0;
    constexpr int64_t kMostMs = int64_t{1} << 40;  // 35 years: past it, chrono would overflow
    if (!absl::SimpleAtoi(req.get_header_value("x-timeout-ms"), &ms) || ms < 1 || ms > kMostMs) {
      return BadRequest(absl::StrCat("X-Timeout-Ms must be a whole number of milliseconds in "
                                     "[1, 2^40], got \"", req.get_header_value("x-timeout-ms"),
                                     "\""));
    }
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  }
  return grpc::Status::OK;
}

// The gateway's workers in use. API calls take one for as long as their
// response lasts (a stream: its whole length) and are refused (429) when all
// but a few are taken, so that /healthz always finds one free; Stop waits
// for them to finish their responses.
struct Load {
  std::mutex mutex;
  std::condition_variable idle;
  int busy = 0;
  int most = 1;
  int port = 0;  // the gateway's (to find a call's connection)
};

class Held {
 public:
  // Null when every worker the API may use is taken.
  static std::shared_ptr<Held> Take(Load& load) {
    std::lock_guard<std::mutex> lock(load.mutex);
    if (load.busy >= load.most) return nullptr;
    ++load.busy;
    return std::shared_ptr<Held>(new Held(load));
  }
  ~Held() {
    std::lock_guard<std::mutex> lock(load_.mutex);
    --load_.busy;
    load_.idle.notify_all();
  }

 private:
  explicit Held(Load& load) : load_(load) {}
  Load& load_;
};

grpc::Status Busy(const Load& load) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrCat("the HTTP gateway serves ", load.most,
                                   " calls at once (--http_threads), all taken: retry later, "
                                   "or use gRPC, which multiplexes"));
}

// The socket of the connection that sent `req` to the gateway on `port`,
// or -1: httplib 0.11 does not give a handler its connection, so it is found
// among the process's sockets by its two ends (unique while the handler
// runs, since the connection stays open until it returns).
int ConnectionSocket(const httplib::Request& req, int port) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  // The peer as httplib names it (getnameinfo, numeric).
  auto host = [](const sockaddr_storage& a, socklen_t size) {
    char name[NI_MAXHOST];
    return ::getnameinfo(reinterpret_cast<const sockaddr*>(&a), size, name, sizeof name, nullptr,
                         0, NI_NUMERICHOST) == 0
               ? std::string(name)
               : std::string();
  };
  auto port_of = [](const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return uint16_t{0};
  };
  while (const dirent* entry = ::readdir(dir)) {
    int fd = -1;
    struct stat info;
    if (!absl::SimpleAtoi(entry->d_name, &fd) || ::fstat(fd, &info) != 0 ||
        !S_ISSOCK(info.st_mode)) {
      continue;
    }
    sockaddr_storage local{}, peer{};
    socklen_t local_size = sizeof local, peer_size = sizeof peer;
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0 ||
        port_of(local) != port || port_of(peer) != req.remote_port ||
        host(peer, peer_size) != req.remote_addr) {
      continue;
    }
    found = fd;
    break;
  }
  ::closedir(dir);
  return found;
}

// Whether the client at the other end of `fd` has hung up (what it may
// still send, a pipelined request, stays unread).
bool HungUp(int fd) {
  char c;
  const ssize_t n = ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

// A unary method of the stub (its callback overload).
template <typename Req, typename Resp>
using UnaryMethod = void (v1::Fwp::Stub::async::*)(grpc::ClientContext*, const Req*, Resp*,
                                                   std::function<void(grpc::Status)>);

// One unary call: `request` in, the answer (or the error) out. A call that
// runs long (a score or a session's prompt) is cancelled when its client
// hangs up, as a stream is, instead of holding its slot to the end.
template <typename Req, typename Resp>
void Unary(Load& load, v1::Fwp::Stub& stub, UnaryMethod<Req, Resp> method, const Req& request,
           const httplib::Request& req, httplib::Response& res) {
  const auto held = Held::Take(load);
  if (held == nullptr) return SetError(res, Busy(load));
  grpc::ClientContext context;
  if (auto s = Prepare(req, &context); !s.ok()) return SetError(res, s);
  Resp response;
  std::mutex mutex;
  std::condition_variable answered;
  std::optional<grpc::Status> status;
  (stub.async()->*method)(&context, &request, &response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mutex);
    status = std::move(s);
    answered.notify_all();
  });
  std::unique_lock<std::mutex> lock(mutex);
  constexpr auto kLook = std::chrono::milliseconds(50);
  if (!answered.wait_for(lock, 2 * kLook, [&] { return status.has_value(); })) {
    // Still running: watch the connection until the answer.
    lock.unlock();
    const int fd = ConnectionSocket(req, load.port);
    lock.lock();
    bool cancelled = false;
    while (!answered.wait_for(lock, kLook, [&] { return status.has_value(); })) {
      if (fd >= 0 && !cancelled && HungUp(fd)) {
        context.TryCancel();
        cancelled = true;
      }
    }
  }
  if (!status->ok()) return SetError(res, *status);
  res.set_content(ToJson(response) + "\n", "application/json");
}

// POST path: the body is the request.
template <typename Req, typename Resp>
void PostBody(httplib::Server& http, Load& load, const char* path, v1::Fwp::Stub& stub,
              UnaryMethod<Req, Resp> method) {
  http.Post(path, [&load, &stub, method](const httplib::Request& req, httplib::Response& res) {
    Req request;
    if (auto st = FromJson(req, &request); !st.ok()) return SetError(res, st);
    Unary(load, stub, method, request, req, res);
  });
}

// A route whose path names the session (the pattern's one group).
template <typename Req, typename Resp>
auto OnSession(Load& load, v1::Fwp::Stub& stub, UnaryMethod<Req, Resp> method) {
  return [&load, &stub, method](const httplib::Request& req, httplib::Response& res) {
    Req request;
    request.set_session_id(req.matches[1]);
    Unary(load, stub, method, request, req, res);
  };
}

// A Generate call an HTTP response streams: its first message is read
// before the response starts, so that a refused request gets its HTTP
// status; the rest as the client takes them.
struct StreamCall {
  std::shared_ptr<Held> held;  // released with the response
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader;
  std::optional<v1::GenerateResponse> first;
  bool finished = false;

  // Starts the call; not OK when it ended without a message.
  grpc::Status Start(v1::Fwp::Stub& stub, const v1::GenerateRequest& request) {
    reader = stub.Generate(&context, request);
    v1::GenerateResponse m;
    if (reader->Read(&m)) {
      first = std::move(m);
      return grpc::Status::OK;
    }
    finished = true;
    const grpc::Status status = reader->Finish();
    return status.ok() ? grpc::Status(grpc::StatusCode::INTERNAL, "the stream ended empty")
                       : status;
  }
  // The next message; nullopt at the end, with `status` its outcome.
  std::optional<v1::GenerateResponse> Next(grpc::Status* status) {
    if (first) {
      auto m = std::move(first);
      first.reset();
      return m;
    }
    v1::GenerateResponse m;
    if (!finished && reader->Read(&m)) return m;
    if (!finished) {
      finished = true;
      *status = reader->Finish();
    }
    return std::nullopt;
  }
  ~StreamCall() {
    if (reader && !finished) {  // the client went away: the request is cancelled
      context.TryCancel();
      v1::GenerateResponse m;
      while (reader->Read(&m)) {
      }
      (void)reader->Finish();
    }
  }
};

// Streams `call` into `res`: line(m) for each message, then end(status)
// (when not empty).
void StreamInto(httplib::Response& res, std::shared_ptr<StreamCall> call, const char* type,
                std::function<std::string(const v1::GenerateResponse&)> line,
                std::function<std::string(const grpc::Status&)> end) {
  res.set_chunked_content_provider(
      type,
      [call, line = std::move(line), end = std::move(end)](size_t, httplib::DataSink& sink) {
        grpc::Status status;
        if (auto m = call->Next(&status)) {
          const std::string text = line(*m);
          return text.empty() || sink.write(text.data(), text.size());  // false: gone
        }
        if (const std::string text = end(status); !text.empty()) {
          sink.write(text.data(), text.size());
        }
        sink.done();
        return true;
      },
      [call](bool) {});  // the call lives until the response is done with
}

// ---- OpenAI completions ----------------------------------------------------

struct Completion {
  v1::GenerateRequest request;
  bool stream = false;
  bool include_usage = false;
};

absl::StatusOr<Completion> ParseCompletion(const std::string& body) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("the body is not a JSON object");
  }
  Completion c;
  v1::GenerateRequest& g = c.request;
  bool temperature_given = false;
  const auto bad = [](const std::string& key, const char* what) {
    return absl::InvalidArgumentError(absl::StrCat("'", key, "' must be ", what));
  };
  for (const auto& [key, v] : j.items()) {
    if (v.is_null()) continue;  // as absent
    if (key == "model" || key == "user") {
      if (!v.is_string()) return bad(key, "a string");
    } else if (key == "prompt") {
      if (v.is_string()) {
        g.mutable_prompt()->set_text(v.get<std::string>());
      } else if (v.is_array() && v.size() == 1 && v[0].is_string()) {
        g.mutable_prompt()->set_text(v[0].get<std::string>());
      } else if (v.is_array() && !v.empty() && v[0].is_number_integer()) {
        for (const json& id : v) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
            return bad(key, "a string, one string in an array, or an array of token ids");
          }
          g.mutable_prompt()->mutable_ids()->add_ids(id.get<int32_t>());
        }
      } else {
        return bad(key, "a string, one string in an array, or an array of token ids");
      }
    } else if (key == "max_tokens") {
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > INT32_MAX) {
        return bad(key, "a whole number ≥ 1");
      }
      g.mutable_stopping()->set_max_tokens(v.get<int32_t>());
    } else if (key == "temperature" || key == "top_p" || key == "presence_penalty" ||
               key == "frequency_penalty" || key == "min_p" || key == "repetition_penalty") {
      if (!v.is_number() || std::abs(v.get<double>()) > 1e30) return bad(key, "a number");
      const float x = static_cast<float>(v.get<double>());
      auto* s = g.mutable_sampling();
      if (key == "temperature") s->set_temperature(x), temperature_given = true;
      if (key == "top_p") s->set_top_p(x);
      if (key == "presence_penalty") s->set_presence_penalty(x);
      if (key == "frequency_penalty") s->set_frequency_penalty(x);
      if (key == "min_p") s->set_min_p(x);
      if (key == "repetition_penalty") s->set_repetition_penalty(x);
    } else if (key == "top_k") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX) {
        return bad(key, "a whole number ≥ 0");
      }
      g.mutable_sampling()->set_top_k(v.get<int32_t>());
    } else if (key == "seed") {
      if (!v.is_number_unsigned()) return bad(key, "a whole number ≥ 0");
      g.mutable_sampling()->set_seed(v.get<uint64_t>());
    } else if (key == "stop") {
      if (v.is_string()) {
        g.mutable_stopping()->add_stop(v.get<std::string>());
      } else if (v.is_array()) {
        for (const json& s : v) {
          if (!s.is_string()) return bad(key, "a string or an array of strings");
          g.mutable_stopping()->add_stop(s.get<std::string>());
        }
      } else {
        return bad(key, "a string or an array of strings");
      }
    } else if (key == "n" || key == "best_of") {
      if (!v.is_number_integer() || v.get<int64_t>() != 1) {
        return bad(key, "1 (one completion a request; send more requests)");
      }
    } else if (key == "echo") {
      if (!v.is_boolean() || v.get<bool>()) return bad(key, "false");
    } else if (key == "logprobs") {
      if (!v.is_number_integer() || v.get<int64_t>() != 0) {
        return absl::InvalidArgumentError(
            "'logprobs' is not served by /v1/completions: POST /v1/generate with \"logprobs\": "
            "true and \"top_logprobs\" gives them");
      }
    } else if (key == "suffix") {
      if (!v.is_string() || !v.get<std::string>().empty()) return bad(key, "empty");
    } else if (key == "logit_bias") {
      if (!v.is_object() || !v.empty()) return bad(key, "empty");
    } else if (key == "stream") {
      if (!v.is_boolean()) return bad(key, "true or false");
      c.stream = v.get<bool>();
    } else if (key == "stream_options") {
      if (!v.is_object()) return bad(key, "an object");
      for (const auto& [option, value] : v.items()) {
        if (option != "include_usage" || !value.is_boolean()) {
          return bad(key, "{\"include_usage\": true or false}");
        }
        c.include_usage = value.get<bool>();
      }
    } else if (key == "session_id") {  // fwp: continue a session
      if (!v.is_string()) return bad(key, "a string");
      g.set_session_id(v.get<std::string>());
    } else if (key == "keep_session" || key == "ignore_eos") {
      if (!v.is_boolean()) return bad(key, "true or false");
      if (key == "keep_session") g.set_keep_session(v.get<bool>());
      if (key == "ignore_eos") g.mutable_stopping()->set_ignore_eos(v.get<bool>());
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown field '", key, "'"));
    }
  }
  if (!g.has_prompt()) return absl::InvalidArgumentError("'prompt' is required");
  // OpenAI's default is 1, fwp.proto's greedy.
  if (!temperature_given) g.mutable_sampling()->set_temperature(1.0f);
  return c;
}

json FinishReasonJson(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_LENGTH: return "length";
    case v1::FINISH_REASON_EOS:
    case v1::FINISH_REASON_STOP: return "stop";
    case v1::FINISH_REASON_CANCELLED: return "cancelled";
    default: return nullptr;
  }
}

// One choice of a completion (or of a streamed piece of one).
json Choice(const std::string& text, json finish_reason) {
  json choice = json::object();
  choice["text"] = text;
  choice["index"] = 0;
  choice["logprobs"] = nullptr;
  choice["finish_reason"] = std::move(finish_reason);
  return choice;
}

json UsageJson(const v1::Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.generated_tokens()},
          {"total_tokens", u.prompt_tokens() + u.generated_tokens()}};
}

std::string CompletionId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("cmpl-%016x%08x", rng(), static_cast<uint32_t>(rng()));
}

}  // namespace

struct HttpGateway::Impl {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Fwp::Stub> stub;
  std::unique_ptr<grpc::health::v1::Health::Stub> health;
  HttpGatewayOptions options;
  httplib::Server http;
  std::thread thread;
  int port = 0;
  Load load;

  void Routes();
  void Completions(const httplib::Request& req, httplib::Response& res);
};

void HttpGateway::Impl::Routes() {
  v1::Fwp::Stub& s = *stub;
  http.Post("/v1/generate", [this, &s](const httplib::Request& req, httplib::Response& res) {
    v1::GenerateRequest request;
    if (auto st = FromJson(req, &request); !st.ok()) return SetError(res, st);
    auto call = std::make_shared<StreamCall>();
    call->held = Held::Take(load);
    if (call->held == nullptr) return SetError(res, Busy(load));
    if (auto st = Prepare(req, &call->context); !st.ok()) return SetError(res, st);
    if (auto st = call->Start(s, request); !st.ok()) return SetError(res, st);
    StreamInto(
        res, call, "application/x-ndjson",
        [](const v1::GenerateResponse& m) { return ToJson(m) + "\n"; },
        [](const grpc::Status& st) { return st.ok() ? std::string() : ErrorJson(st) + "\n"; });
  });
  // The unary calls: the body (or the path's session id) in, the answer out.
  using S = class v1::Fwp::Stub::async;  // the callback overloads
  PostBody<v1::ScoreRequest, v1::ScoreResponse>(http, load, "/v1/score", s, &S::Score);
  PostBody<v1::TokenizeRequest, v1::TokenizeResponse>(http, load, "/v1/tokenize", s, &S::Tokenize);
  PostBody<v1::DetokenizeRequest, v1::DetokenizeResponse>(http, load, "/v1/detokenize", s,
                                                           &S::Detokenize);
  PostBody<v1::CreateSessionRequest, v1::SessionInfo>(http, load, "/v1/sessions", s,
                                                      &S::CreateSession);
  const char* session = R"(/v1/sessions/([^/]+))";
  http.Get(session, OnSession<v1::GetSessionRequest, v1::SessionInfo>(load, s, &S::GetSession));
  http.Delete(session, OnSession<v1::DeleteSessionRequest, v1::DeleteSessionResponse>(
                           load, s, &S::DeleteSession));
  http.Post(R"(/v1/sessions/([^/]+)/fork)",
            OnSession<v1::ForkSessionRequest, v1::SessionInfo>(load, s, &S::ForkSession));
  http.Get("/v1/model", [this, &s](const httplib::Request& req, httplib::Response& res) {
    Unary<v1::ModelInfoRequest, v1::ModelInfoResponse>(load, s, &S::ModelInfo, v1::ModelInfoRequest(),
                                                       req, res);
  });
  http.Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status =
        health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response);
    const bool serving =
        status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
    res.status = serving ? 200 : 503;
    res.set_content(serving ? "SERVING\n" : "NOT_SERVING\n", "text/plain");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json model = json::object();
    model["id"] = options.model_name;
    model["object"] = "model";
    model["owned_by"] = "fwp";
    json list = json::object();
    list["object"] = "list";
    list["data"] = json::array();
    list["data"].push_back(std::move(model));
    res.set_content(list.dump() + "\n", "application/json");
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Completions(req, res);
  });
}

void HttpGateway::Impl::Completions(const httplib::Request& req, httplib::Response& res) {
  auto parsed = ParseCompletion(req.body);
  if (!parsed.ok()) return SetError(res, BadRequest(std::string(parsed.status().message())));
  auto call = std::make_shared<StreamCall>();
  call->held = Held::Take(load);
  if (call->held == nullptr) return SetError(res, Busy(load));
  if (auto st = Prepare(req, &call->context); !st.ok()) return SetError(res, st);
  if (auto st = call->Start(*stub, parsed->request); !st.ok()) return SetError(res, st);
  const std::string id = CompletionId();
  const int64_t created = std::time(nullptr);
  const json head = {{"id", id},
                     {"object", "text_completion"},
                     {"created", created},
                     {"model", options.model_name}};
  const bool show_session =
      parsed->request.keep_session() || !parsed->request.session_id().empty();
  if (!parsed->stream) {
    // The whole completion, one JSON answer. It is sent as it is made: a
    // space for each message (JSON's leading whitespace), so that a client
    // that has gone is seen, and its request cancelled, at the next token;
    // the answer at the end (an error then arrives as {"error": ...} in a
    // 200 response, its status sent already).
    struct Whole {
      std::string text, session;
      json reason = nullptr;
      v1::Usage usage;
    };
    auto whole = std::make_shared<Whole>();
    StreamInto(
        res, call, "application/json",
        [whole](const v1::GenerateResponse& m) {
          whole->text += m.text();
          if (!m.session_id().empty()) whole->session = m.session_id();
          if (m.finished()) {
            whole->reason = FinishReasonJson(m.finish_reason());
            whole->usage = m.usage();
          }
          return std::string(" ");
        },
        [whole, head, show_session](const grpc::Status& st) {
          if (!st.ok()) return ErrorJson(st) + "\n";
          json answer = head;
          answer["choices"] = json::array();
          answer["choices"].push_back(Choice(whole->text, whole->reason));
          answer["usage"] = UsageJson(whole->usage);
          if (show_session) answer["session_id"] = whole->session;  // fwp: to continue it
          return answer.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
        });
    return;
  }
  res.set_header("Cache-Control", "no-cache");
  const bool include_usage = parsed->include_usage;
  StreamInto(
      res, call, "text/event-stream",
      [head, include_usage, show_session](const v1::GenerateResponse& m) {
        json event = head;
        event["choices"] = json::array();
        event["choices"].push_back(
            Choice(m.text(), m.finished() ? FinishReasonJson(m.finish_reason()) : json(nullptr)));
        if (show_session && !m.session_id().empty()) event["session_id"] = m.session_id();
        std::string out = absl::StrCat("data: ", event.dump(), "\n\n");
        if (m.finished() && include_usage) {
          json usage = head;
          usage["choices"] = json::array();
          usage["usage"] = UsageJson(m.usage());
          absl::StrAppend(&out, "data: ", usage.dump(), "\n\n");
        }
        return out;
      },
      [](const grpc::Status& st) {
        return st.ok() ? std::string("data: [DONE]\n\n")
                       : absl::StrCat("data: ", ErrorJson(st), "\n\n");
      });
}

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(
    std::shared_ptr<grpc::Channel> channel, const HttpGatewayOptions& options) {
  if (options.threads < 1 || options.threads > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_threads must be in [1, 4096], got ", options.threads));
  }
  std::unique_ptr<HttpGateway> gateway(new HttpGateway());
  gateway->impl_ = std::make_unique<Impl>();
  Impl& impl = *gateway->impl_;
  impl.channel = std::move(channel);
  impl.stub = v1::Fwp::NewStub(impl.channel);
  impl.health = grpc::health::v1::Health::NewStub(impl.channel);
  impl.options = options;
  const int threads = options.threads;
  impl.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  // A few workers are kept from the API for /healthz (and /v1/models).
  impl.load.most = std::max(1, threads - std::min(4, threads / 2));
  impl.http.set_payload_max_length(static_cast<size_t>(options.max_body_bytes));
  // An idle keep-alive connection holds a thread, and Stop waits for it.
  impl.http.set_keep_alive_timeout(2);
  // SO_REUSEADDR only (httplib's default adds SO_REUSEPORT, which would let
  // a second server share the port).
  impl.http.set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  impl.Routes();
  if (options.port == 0) {
    impl.port = impl.http.bind_to_any_port(options.address);
  } else if (impl.http.bind_to_port(options.address, options.port)) {
    impl.port = options.port;
  }
  if (impl.port <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for HTTP on ", options.address, ":", options.port));
  }
  impl.load.port = impl.port;
  impl.thread = std::thread([&impl] { impl.http.listen_after_bind(); });
  // Until it runs, httplib's stop() would not stop it (and Stop would wait
  // on the thread for good).
  while (!impl.http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return gateway;
}

int HttpGateway::port() const { return impl_->port; }

void HttpGateway::Stop() {
  if (!impl_ || !impl_->thread.joinable()) return;
  {
    // Responses still being written (a drained stream's last lines, its
    // error) are let finish, for a while: stop() cuts them off.
    std::unique_lock<std::mutex> lock(impl_->load.mutex);
    impl_->load.idle.wait_for(lock, std::chrono::seconds(10),
                              [&] { return impl_->load.busy == 0; });
  }
  impl_->http.stop();
  impl_->thread.join();
}

HttpGateway::~HttpGateway() { Stop(); }

}  // namespace fwp::server
