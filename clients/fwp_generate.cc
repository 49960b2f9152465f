// fwp-generate: one streaming completion from fwp-server.
//
//   fwp-generate --address localhost:50051 --prompt "The jury said" --max_tokens 64
//
// Prints the text as it streams (or, with --json, one JSON object per
// message), then a usage line on stderr. Exit status: 0 on success, 1 on an
// RPC error (its code and message on stderr), 2 on bad flags.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "clients/client_common.h"
#include "fwp/v1/fwp.grpc.pb.h"

ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(std::string, prompt_ids, "", "prompt as comma-separated token ids (instead of --prompt)");
ABSL_FLAG(std::string, session, "", "continue this session");
ABSL_FLAG(bool, keep_session, false, "keep the state as a new session (its id on stderr)");
ABSL_FLAG(int, max_tokens, 0, "tokens to generate (0: the server's default)");
ABSL_FLAG(double, temperature, 0.0, "0: greedy");
ABSL_FLAG(int, top_k, 0, "0: off");
ABSL_FLAG(double, top_p, 1.0, "nucleus mass (0, 1]");
ABSL_FLAG(double, min_p, 0.0, "[0, 1)");
ABSL_FLAG(double, repetition_penalty, 1.0, "1: off");
ABSL_FLAG(double, presence_penalty, 0.0, "[-2, 2]");
ABSL_FLAG(double, frequency_penalty, 0.0, "[-2, 2]");
ABSL_FLAG(int64_t, seed, -1, "random seed (-1: the server draws one)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings, comma-separated; C escapes are "
          "decoded (\\n a newline, \\x2c a comma inside one)");
ABSL_FLAG(std::string, stop_token_ids, "", "stop token ids, comma-separated");
ABSL_FLAG(bool, ignore_eos, false, "keep going past the end-of-sequence token");
ABSL_FLAG(bool, logprobs, false, "report each token's log-probability (with --json)");
ABSL_FLAG(int, top_logprobs, 0, "alternatives per token (with --json)");
ABSL_FLAG(bool, json, false, "print one JSON object per streamed message");
ABSL_FLAG(double, timeout_s, 0.0, "deadline for the whole call (0: none)");

namespace {

bool ParseIds(const std::string& text, google::protobuf::RepeatedField<int32_t>* out,
              const char* flag) {
  for (absl::string_view piece : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) {
      std::fprintf(stderr, "fwp-generate: %s: \"%s\" is not a token id\n", flag,
                   std::string(piece).c_str());
      return false;
    }
    out->Add(id);
  }
  return true;
}

const char* ReasonName(fwp::v1::FinishReason reason) {
  switch (reason) {
    case fwp::v1::FINISH_REASON_LENGTH: return "length";
    case fwp::v1::FINISH_REASON_EOS: return "eos";
    case fwp::v1::FINISH_REASON_STOP: return "stop";
    case fwp::v1::FINISH_REASON_CANCELLED: return "cancelled";
    default: return "unspecified";
  }
}

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv, "stream one completion from fwp-server");
  fwp::client::ChannelOptions channel_options = fwp::client::ChannelOptionsFromFlags();

  fwp::v1::GenerateRequest request;
  if (!absl::GetFlag(FLAGS_prompt_ids).empty()) {
    if (!ParseIds(absl::GetFlag(FLAGS_prompt_ids), request.mutable_prompt()->mutable_ids()->mutable_ids(),
                  "--prompt_ids")) {
      return 2;
    }
  } else {
    request.mutable_prompt()->set_text(absl::GetFlag(FLAGS_prompt));
  }
  request.set_session_id(absl::GetFlag(FLAGS_session));
  request.set_keep_session(absl::GetFlag(FLAGS_keep_session));
  auto* s = request.mutable_sampling();
  s->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  s->set_top_k(absl::GetFlag(FLAGS_top_k));
  s->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
  s->set_min_p(static_cast<float>(absl::GetFlag(FLAGS_min_p)));
  s->set_repetition_penalty(static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
  s->set_presence_penalty(static_cast<float>(absl::GetFlag(FLAGS_presence_penalty)));
  s->set_frequency_penalty(static_cast<float>(absl::GetFlag(FLAGS_frequency_penalty)));
  if (absl::GetFlag(FLAGS_seed) >= 0) s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  auto* stop = request.mutable_stopping();
  if (absl::GetFlag(FLAGS_max_tokens) != 0) stop->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  for (const auto& value : absl::GetFlag(FLAGS_stop)) {
    auto text = fwp::client::StopString(value);
    if (!text.ok()) {
      std::fprintf(stderr, "fwp-generate: %s\n", std::string(text.status().message()).c_str());
      return 2;
    }
    stop->add_stop(*text);
  }
  if (!ParseIds(absl::GetFlag(FLAGS_stop_token_ids), stop->mutable_stop_token_ids(),
                "--stop_token_ids")) {
    return 2;
  }
  stop->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  request.set_logprobs(absl::GetFlag(FLAGS_logprobs));
  request.set_top_logprobs(absl::GetFlag(FLAGS_top_logprobs));

  auto channel = fwp::client::MakeChannel(channel_options);
  if (!channel.ok()) {
    std::fprintf(stderr, "fwp-generate: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  auto stub = fwp::v1::Fwp::NewStub(*channel);
  grpc::ClientContext context;
  fwp::client::PrepareContext(
      context, channel_options, request.session_id(),
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000)));
  auto reader = stub->Generate(&context, request);
  fwp::v1::GenerateResponse response;
  const bool json = absl::GetFlag(FLAGS_json);
  fwp::v1::GenerateResponse last;
  std::string session_id;
  bool printed = false;
  while (reader->Read(&response)) {
    printed = true;
    if (!response.session_id().empty()) session_id = response.session_id();
    if (json) {
      nlohmann::json line = {{"token_ids", std::vector<int32_t>(response.token_ids().begin(),
                                                                response.token_ids().end())},
                             {"text", response.text()}};
      if (!response.session_id().empty()) line["session_id"] = response.session_id();
      if (response.logprobs_size() > 0) {
        nlohmann::json lps = nlohmann::json::array();
        for (const auto& lp : response.logprobs()) lps.push_back({{"id", lp.id()}, {"logprob", lp.logprob()}});
        line["logprobs"] = lps;
      }
      if (response.top_logprobs_size() > 0) {
        nlohmann::json lps = nlohmann::json::array();
        for (const auto& lp : response.top_logprobs()) lps.push_back({{"id", lp.id()}, {"logprob", lp.logprob()}});
        line["top_logprobs"] = lps;
      }
      if (response.finished()) {
        const auto& u = response.usage();
        line["finished"] = true;
        line["finish_reason"] = ReasonName(response.finish_reason());
        line["usage"] = {{"prompt_tokens", u.prompt_tokens()},
                         {"generated_tokens", u.generated_tokens()},
                         {"time_to_first_token_s", u.time_to_first_token_s()},
                         {"total_time_s", u.total_time_s()},
                         {"session_tokens", u.session_tokens()}};
      }
      std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"
                << std::flush;
    } else {
      std::cout << response.text() << std::flush;
    }
    if (response.finished()) last = response;
  }
  grpc::Status status = reader->Finish();
  if (!json && printed) std::cout << "\n";
  if (!status.ok()) {
    std::fprintf(stderr, "fwp-generate: %s\n", fwp::client::Describe(status).c_str());
    return 1;
  }
  const auto& u = last.usage();
  std::fprintf(stderr,
               "[%s] %d prompt + %d generated tokens, first token %.1f ms, %.1f tokens/s%s%s\n",
               ReasonName(last.finish_reason()), u.prompt_tokens(), u.generated_tokens(),
               u.time_to_first_token_s() * 1e3,
               u.total_time_s() > u.time_to_first_token_s() && u.generated_tokens() > 1
                   ? (u.generated_tokens() - 1) / (u.total_time_s() - u.time_to_first_token_s())
                   : 0.0,
               session_id.empty() ? "" : ", session ", session_id.c_str());
  return 0;
}
