// fwp-bench-server: fwp-server under concurrent streams, against the
// engine's own decode rate without gRPC.
//
//   fwp-bench-server --model models/default --backend auto --levels 1,16,64,256
//
// For each concurrency level c: c client threads each stream one greedy
// completion (--prompt random prompt tokens, --tokens generated, EOS
// ignored) from an in-process server over a loopback gRPC channel; reported:
// aggregate generated tokens/s (first request sent to last token received),
// TTFT and inter-token latency percentiles (client side). Then the same work
// straight on the model — prefill each prompt, then one batched Step per
// token with argmax per slot — the engine's ceiling, and the serving
// overhead 1 − served/engine.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "fwp/v1/fwp.grpc.pb.h"
#include "kernels/random.h"
#include "kernels/sampling.h"
#include "model/model_dir.h"
#include "server/server.h"

ABSL_FLAG(std::string, model, "models/default", "model directory");
ABSL_FLAG(std::string, backend, "auto", "auto, cpu, cuda, cuda:N");
ABSL_FLAG(std::string, levels, "1,16,64,256", "concurrent streams, comma-separated");
ABSL_FLAG(int, tokens, 64, "tokens generated per stream");
ABSL_FLAG(int, prompt, 16, "prompt tokens per stream");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature of the served streams (0: greedy)");
ABSL_FLAG(double, top_p, 1.0, "nucleus mass of the served streams (1: off)");
ABSL_FLAG(double, repetition_penalty, 1.0,
          "repetition penalty of the served streams (1: off; fwp-chat's default is 1.1)");

namespace {

using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct StreamTimes {
  Clock::time_point start;
  std::vector<Clock::time_point> tokens;
  bool ok = false;
};

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "fwp-server under concurrent streams against the engine's own rate\n"
      "\n"
      "  fwp-bench-server --model models/default --backend auto --levels 1,16,64,256");
  std::vector<int> levels;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_levels), ',')) {
    int v;
    if (!absl::SimpleAtoi(s, &v) || v < 1) {
      std::fprintf(stderr, "--levels: bad level \"%s\"\n", std::string(s).c_str());
      return 2;
    }
    levels.push_back(v);
  }
  const int max_level = *std::max_element(levels.begin(), levels.end());
  const int tokens = absl::GetFlag(FLAGS_tokens);
  const int prompt_len = absl::GetFlag(FLAGS_prompt);
  const std::string backend_name = fwp::ResolveBackendName(absl::GetFlag(FLAGS_backend));

  fwp::server::ServerOptions options;
  options.model_dir = absl::GetFlag(FLAGS_model);
  options.backend = backend_name;
  options.address = "127.0.0.1:0";
  options.metrics_port = -1;
  options.engine.slots = max_level;
  options.engine.max_requests = 4 * max_level;
  options.engine.max_queue = 4 * max_level;
  options.engine.step_tokens = std::max<int64_t>(512, max_level + 64);
  auto server = fwp::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "fwp-bench-server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string((*server)->port()),
                                     grpc::InsecureChannelCredentials());
  auto stub = fwp::v1::Fwp::NewStub(channel);

  // The engine alone: the same model on its own backend.
  auto backend = fwp::MakeBackend(backend_name);
  auto loaded = fwp::LoadModelDir(options.model_dir, **backend);
  if (!loaded.ok()) {
    std::fprintf(stderr, "fwp-bench-server: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  fwp::Model& model = *loaded->model;
  const int64_t vocab = loaded->config.vocab_size;

  std::printf("fwp-bench-server: %s, backend %s, %d prompt + %d generated tokens per stream\n",
              options.model_dir.c_str(), backend_name.c_str(), prompt_len, tokens);
  std::printf("%7s %12s %12s %9s %9s %9s %9s %9s %12s %9s\n", "streams", "served tok/s",
              "engine tok/s", "overhead", "TTFT p50", "TTFT p99", "ITL p50", "ITL p90", "ITL p99",
              "errors");
  fwp::Rng rng(1);
  for (int level : levels) {
    std::vector<std::vector<int32_t>> prompts(level);
    for (auto& p : prompts) {
      for (int i = 0; i < prompt_len; ++i) p.push_back(static_cast<int32_t>(4 + rng.Next() % (vocab - 4)));
    }
    // Served.
    std::vector<StreamTimes> times(level);
    std::vector<std::thread> threads;
    const auto start = Clock::now();
    for (int s = 0; s < level; ++s) {
      threads.emplace_back([&, s] {
        fwp::v1::GenerateRequest request;
        for (int32_t id : prompts[s]) request.mutable_prompt()->mutable_ids()->add_ids(id);
        request.mutable_stopping()->set_max_tokens(tokens);
        request.mutable_stopping()->set_ignore_eos(true);
        request.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
        if (absl::GetFlag(FLAGS_top_p) < 1.0) {
          request.mutable_sampling()->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
        }
        if (absl::GetFlag(FLAGS_repetition_penalty) != 1.0) {
          request.mutable_sampling()->set_repetition_penalty(
              static_cast<float>(absl::GetFlag(FLAGS_repetition_penalty)));
        }
        request.mutable_sampling()->set_seed(static_cast<uint64_t>(s) + 1);
        grpc::ClientContext context;
        times[s].start = Clock::now();
        auto reader = stub->Generate(&context, request);
        fwp::v1::GenerateResponse m;
        while (reader->Read(&m)) {
          for (int i = 0; i < m.token_ids_size(); ++i) times[s].tokens.push_back(Clock::now());
        }
        times[s].ok = reader->Finish().ok();
      });
    }
    for (auto& t : threads) t.join();
    Clock::time_point end = start;
    std::vector<double> ttft, itl;
    int64_t generated = 0;
    int errors = 0;
    for (const auto& t : times) {
      errors += !t.ok;
      if (t.tokens.empty()) continue;
      generated += static_cast<int64_t>(t.tokens.size());
      end = std::max(end, t.tokens.back());
      ttft.push_back(std::chrono::duration<double>(t.tokens[0] - t.start).count());
      for (size_t i = 1; i < t.tokens.size(); ++i) {
        itl.push_back(std::chrono::duration<double>(t.tokens[i] - t.tokens[i - 1]).count());
      }
    }
    const double served = generated / std::chrono::duration<double>(end - start).count();

    // Engine alone: prefill, then `tokens` batched steps with argmax.
    auto pool = model.NewStatePool(level);
    std::vector<int32_t> slots(level), next(level);
    std::vector<float> logits(static_cast<size_t>(level) * vocab);
    const auto engine_start = Clock::now();
    for (int s = 0; s < level; ++s) {
      slots[s] = s;
      if (!model.Prefill(**pool, {&slots[s], 1}, prompts[s], false, logits.data()).ok()) return 1;
      next[s] = fwp::cpu::Argmax(logits.data(), vocab);
    }
    for (int t = 1; t < tokens; ++t) {
      if (!model.Step(**pool, slots, next, logits.data()).ok()) return 1;
      for (int s = 0; s < level; ++s) next[s] = fwp::cpu::Argmax(logits.data() + s * vocab, vocab);
    }
    const double engine_s = std::chrono::duration<double>(Clock::now() - engine_start).count();
    const double engine = static_cast<double>(level) * tokens / engine_s;

    std::printf("%7d %12.1f %12.1f %8.1f%% %7.1fms %7.1fms %7.2fms %7.2fms %10.2fms %9d\n",
                level, served, engine, 100.0 * (1.0 - served / engine),
                1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99),
                1e3 * Percentile(itl, 0.5), 1e3 * Percentile(itl, 0.9),
                1e3 * Percentile(itl, 0.99), errors);
    std::fflush(stdout);
  }
  (*server)->Shutdown(std::chrono::milliseconds(0));
  return 0;
}
