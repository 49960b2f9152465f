// fwp-loadtest: a load generator and report for fwp-server.
//
//   fwp-loadtest --address localhost:50051 --mode closed --levels 1,4,16,64,256
//       --requests 200 --duration_s 60 --prompt_tokens 16:64 --max_tokens 32:128
//       --json_out load.json --plot_out load.png
//
// Modes:
//   closed  a concurrency sweep: at each level, that many clients each send
//           a request, wait for its last token, and send the next
//   open    open-loop Poisson arrivals at each --rates value (requests/s)
//   chat    chat-like sessions: at each level, that many clients each create
//           a session and hold --turns turns on one Chat stream, then delete it
// No request of a level starts after --requests requests or --duration_s
// seconds, whichever comes first; the requests running then get --drain_s
// more to finish, and those still running are cut (counted as "cut", apart
// from the errors and the latencies), so sent = ok + errors + cut always. A
// level's duration_s is its wall time, the drain included.
// Per level: request and output-token throughput, TTFT, inter-token latency,
// time per output token and end-to-end latency at p50/p90/p99, errors by
// status code — as a table, a JSON file and a PNG plot (gnuplot).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "cli/flags.h"
#include "clients/client_common.h"
#include "fwp/v1/fwp.grpc.pb.h"

ABSL_FLAG(std::string, mode, "closed", "closed | open | chat");
ABSL_FLAG(std::string, levels, "1,4,16,64", "closed/chat: concurrent clients per level");
ABSL_FLAG(std::string, rates, "1,4,16", "open: request rates per level (requests/s)");
ABSL_FLAG(int, requests, 100, "requests per level at most (chat: turns)");
ABSL_FLAG(double, duration_s, 30.0, "seconds per level at most (no request starts later)");
ABSL_FLAG(double, drain_s, 30.0, "seconds the requests still running at a level's end get to "
          "finish; those cut then are counted apart (\"cut\"), not in the latencies");
ABSL_FLAG(std::string, prompt_tokens, "16:64", "prompt length range MIN:MAX (uniform)");
ABSL_FLAG(std::string, max_tokens, "32:128", "output length range MIN:MAX (uniform)");
ABSL_FLAG(int, turns, 4, "chat: turns per session");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature");
ABSL_FLAG(uint64_t, seed, 1, "seed of prompts, lengths and arrivals");
ABSL_FLAG(std::string, json_out, "", "write the report as JSON here");
ABSL_FLAG(std::string, plot_out, "", "write a throughput-vs-latency PNG here (gnuplot)");

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// gRPC deadlines are on the system clock.
std::chrono::system_clock::time_point SystemTime(Clock::time_point t) {
  return std::chrono::system_clock::now() +
         std::chrono::duration_cast<std::chrono::system_clock::duration>(t - Clock::now());
}

struct Range {
  int lo = 0, hi = 0;
};

bool ParseRange(const std::string& text, Range* range) {
  std::vector<std::string> parts = absl::StrSplit(text, ':');
  if (parts.size() == 1) parts.push_back(parts[0]);
  return parts.size() == 2 && absl::SimpleAtoi(parts[0], &range->lo) &&
         absl::SimpleAtoi(parts[1], &range->hi) && range->lo >= 1 && range->hi >= range->lo;
}

struct Result {
  grpc::StatusCode code = grpc::StatusCode::OK;
  Clock::time_point start;
  Clock::time_point end;  // when a failed request ended
  std::vector<Clock::time_point> tokens;
};

// Arrival times of `n` tokens that came in one message at `now`: the first
// message's all at `now`; a later one's spread evenly since the previous token
// (the server merges tokens a slow reader missed).
void AddTokens(Result& r, int n, Clock::time_point now) {
  const Clock::time_point previous = r.tokens.empty() ? now : r.tokens.back();
  for (int i = 1; i <= n; ++i) r.tokens.push_back(previous + (now - previous) * i / n);
}

struct Stats {
  double p50 = 0, p90 = 0, p99 = 0;
};

Stats Percentiles(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const auto at = [&](double p) {
    return v[std::min(v.size() - 1, static_cast<size_t>(std::ceil(p * v.size())) - 1)];
  };
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  return s;
}

class LoadTest {
 public:
  LoadTest(std::shared_ptr<grpc::Channel> channel, fwp::client::ChannelOptions options,
           int32_t vocab)
      : stub_(fwp::v1::Fwp::NewStub(channel)), options_(std::move(options)), vocab_(vocab) {
    ParseRange(absl::GetFlag(FLAGS_prompt_tokens), &prompt_);
    ParseRange(absl::GetFlag(FLAGS_max_tokens), &output_);
  }

  // Runs one level; `level` is a concurrency (closed, chat) or a rate (open).
  nlohmann::json RunLevel(const std::string& mode, double level) {
    results_.clear();
    sent_ = 0;
    const int max_requests = absl::GetFlag(FLAGS_requests);
    const auto start = Clock::now();
    deadline_ = start + std::chrono::milliseconds(
                            static_cast<int64_t>(absl::GetFlag(FLAGS_duration_s) * 1000));
    cutoff_ = deadline_ + std::chrono::milliseconds(
                              static_cast<int64_t>(absl::GetFlag(FLAGS_drain_s) * 1000));
    std::vector<std::thread> threads;
    if (mode == "open") {
      std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) + static_cast<uint64_t>(level * 1000));
      std::exponential_distribution<double> gap(level);
      auto next = start;
      for (int i = 0; i < max_requests; ++i) {
        next += std::chrono::nanoseconds(static_cast<int64_t>(gap(rng) * 1e9));
        if (next >= deadline_) break;
        std::this_thread::sleep_until(next);
        ++sent_;
        threads.emplace_back([this, i] { Record(OneRequest(i)); });
      }
    } else {
      const int clients = static_cast<int>(level);
      for (int c = 0; c < clients; ++c) {
        threads.emplace_back([this, c, mode, max_requests] {
          if (mode == "chat") {
            ChatClient(c, max_requests);
            return;
          }
          while (Clock::now() < deadline_) {
            const int i = sent_.fetch_add(1);
            if (i >= max_requests) {
              --sent_;
              return;
            }
            Record(OneRequest(i));
          }
        });
      }
    }
    for (auto& t : threads) t.join();
    return Report(mode, level, Seconds(Clock::now() - start));
  }

 private:
  fwp::v1::Prompt RandomPrompt(std::mt19937_64& rng) {
    fwp::v1::Prompt prompt;
    std::uniform_int_distribution<int> length(prompt_.lo, prompt_.hi);
    std::uniform_int_distribution<int32_t> id(4, vocab_ - 1);
    for (int n = length(rng); n > 0; --n) prompt.mutable_ids()->add_ids(id(rng));
    return prompt;
  }

  int RandomOutput(std::mt19937_64& rng) {
    return std::uniform_int_distribution<int>(output_.lo, output_.hi)(rng);
  }

  Result OneRequest(int i) {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 1000003 + i);
    fwp::v1::GenerateRequest request;
    *request.mutable_prompt() = RandomPrompt(rng);
    request.mutable_stopping()->set_max_tokens(RandomOutput(rng));
    request.mutable_stopping()->set_ignore_eos(true);
    request.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
    grpc::ClientContext context;
    fwp::client::PrepareContext(context, options_);
    context.set_deadline(SystemTime(cutoff_));
    Result r;
    r.start = Clock::now();
    auto reader = stub_->Generate(&context, request);
    fwp::v1::GenerateResponse m;
    while (reader->Read(&m)) AddTokens(r, m.token_ids_size(), Clock::now());
    r.code = reader->Finish().error_code();
    r.end = Clock::now();
    return r;
  }

  // One session after another, each with `turns` turns on one Chat stream.
  void ChatClient(int client, int max_requests) {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 7919 + client);
    while (Clock::now() < deadline_) {
      // Random, not from --seed: another run (or one cut short, whose
      // sessions remain) must not meet these ids.
      static thread_local std::mt19937_64 ids(std::random_device{}());
      std::string id;
      for (int i = 0; i < 2; ++i) id += absl::StrFormat("%016x", ids());
      {
        grpc::ClientContext context;
        fwp::client::PrepareContext(context, options_, id);
        context.set_deadline(SystemTime(cutoff_));
        fwp::v1::CreateSessionRequest request;
        request.set_session_id(id);
        fwp::v1::SessionInfo info;
        grpc::Status status = stub_->CreateSession(&context, request, &info);
        if (!status.ok()) {
          if (sent_.fetch_add(1) >= max_requests) { --sent_; return; }
          Result r;
          r.code = status.error_code();
          r.end = Clock::now();
          Record(r);
          continue;
        }
      }
      grpc::ClientContext context;
      fwp::client::PrepareContext(context, options_, id);
      context.set_deadline(SystemTime(cutoff_));
      auto stream = stub_->Chat(&context);
      bool broken = false;
      for (int turn = 0; turn < absl::GetFlag(FLAGS_turns) && !broken && Clock::now() < deadline_;
           ++turn) {
        if (sent_.fetch_add(1) >= max_requests) {
          --sent_;
          break;
        }
        fwp::v1::ChatRequest request;
        *request.mutable_prompt() = RandomPrompt(rng);
        if (turn == 0) request.set_session_id(id);
        request.mutable_stopping()->set_max_tokens(RandomOutput(rng));
        request.mutable_stopping()->set_ignore_eos(true);
        request.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
        Result r;
        r.start = Clock::now();
        bool finished = false;
        if (stream->Write(request)) {
          fwp::v1::GenerateResponse m;
          while (!finished && stream->Read(&m)) {
            AddTokens(r, m.token_ids_size(), Clock::now());
            finished = m.finished();
          }
        }
        if (!finished) {
          broken = true;
          r.code = stream->Finish().error_code();
          // A stream that ended without error before its turn did.
          if (r.code == grpc::StatusCode::OK) r.code = grpc::StatusCode::UNKNOWN;
          r.end = Clock::now();
        }
        Record(r);
      }
      if (!broken) {
        stream->WritesDone();
        stream->Finish();
      }
      grpc::ClientContext del;
      fwp::client::PrepareContext(del, options_, id, std::chrono::seconds(5));
      fwp::v1::DeleteSessionRequest request;
      request.set_session_id(id);
      fwp::v1::DeleteSessionResponse response;
      stub_->DeleteSession(&del, request, &response);
      if (sent_.load() >= max_requests) return;
    }
  }

  void Record(Result r) {
    std::lock_guard<std::mutex> lock(mutex_);
    results_.push_back(std::move(r));
  }

  nlohmann::json Report(const std::string& mode, double level, double wall_s) {
    std::vector<double> ttft, itl, tpot, e2e;
    std::map<std::string, int> errors;
    int ok = 0, cut = 0;
    int64_t tokens = 0;  // of the requests that completed
    for (const auto& r : results_) {
      // Cut: ended by the cut-off (the only deadline set), not failed before.
      if ((r.code == grpc::StatusCode::DEADLINE_EXCEEDED ||
           r.code == grpc::StatusCode::CANCELLED) &&
          r.end >= cutoff_ - std::chrono::milliseconds(100)) {
        ++cut;
        continue;
      }
      if (r.code != grpc::StatusCode::OK) {
        ++errors[fwp::client::CodeName(r.code)];
        continue;
      }
      ++ok;
      tokens += static_cast<int64_t>(r.tokens.size());
      if (r.tokens.empty()) continue;
      ttft.push_back(Seconds(r.tokens.front() - r.start));
      e2e.push_back(Seconds(r.tokens.back() - r.start));
      for (size_t i = 1; i < r.tokens.size(); ++i) itl.push_back(Seconds(r.tokens[i] - r.tokens[i - 1]));
      if (r.tokens.size() > 1) {
        tpot.push_back(Seconds(r.tokens.back() - r.tokens.front()) / (r.tokens.size() - 1));
      }
    }
    const auto stats = [](std::vector<double> v) {
      const Stats s = Percentiles(std::move(v));
      return nlohmann::json{{"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}};
    };
    int error_count = 0;
    for (const auto& [code, n] : errors) error_count += n;
    return {{"mode", mode},
            {mode == "open" ? "rate" : "concurrency", level},
            {"sent", static_cast<int>(results_.size())},
            {"ok", ok},
            {"errors", error_count},
            {"cut", cut},
            {"errors_by_code", errors},
            {"duration_s", wall_s},
            {"request_throughput", ok / wall_s},
            {"output_tokens_per_s", tokens / wall_s},
            {"ttft_s", stats(ttft)},
            {"itl_s", stats(itl)},
            {"tpot_s", stats(tpot)},
            {"e2e_s", stats(e2e)}};
  }

  std::unique_ptr<fwp::v1::Fwp::Stub> stub_;
  fwp::client::ChannelOptions options_;
  int32_t vocab_;
  Range prompt_, output_;
  std::atomic<int> sent_{0};
  Clock::time_point deadline_;  // no request starts after it
  Clock::time_point cutoff_;    // running ones are cut (deadline_ + --drain_s)
  std::mutex mutex_;
  std::vector<Result> results_;
};

void PrintTable(const nlohmann::json& levels) {
  std::printf("%8s %6s %6s %6s %5s %8s %10s | %8s %8s %8s | %7s %7s %7s | %7s %7s | %8s %8s\n",
              "level", "sent", "ok", "errors", "cut", "req/s", "tok/s", "TTFT p50", "p90", "p99",
              "ITL p50", "p90", "p99", "TPOT p50", "p99", "E2E p50", "p99");
  for (const auto& l : levels) {
    const double level = l.contains("rate") ? l["rate"].get<double>() : l["concurrency"].get<double>();
    const auto ms = [&](const char* key, const char* p) { return 1e3 * l[key][p].get<double>(); };
    std::printf("%8g %6d %6d %6d %5d %8.2f %10.1f | %6.1fms %6.1fms %6.1fms | %5.1fms %5.1fms "
                "%5.1fms | %5.1fms %5.1fms | %7.3fs %7.3fs\n",
                level, l["sent"].get<int>(), l["ok"].get<int>(), l["errors"].get<int>(),
                l["cut"].get<int>(),
                l["request_throughput"].get<double>(), l["output_tokens_per_s"].get<double>(),
                ms("ttft_s", "p50"), ms("ttft_s", "p90"), ms("ttft_s", "p99"), ms("itl_s", "p50"),
                ms("itl_s", "p90"), ms("itl_s", "p99"), ms("tpot_s", "p50"), ms("tpot_s", "p99"),
                l["e2e_s"]["p50"].get<double>(), l["e2e_s"]["p99"].get<double>());
    for (const auto& [code, n] : l["errors_by_code"].items()) {
      std::printf("%8s   %d × %s\n", "", n.get<int>(), code.c_str());
    }
  }
}

bool Plot(const nlohmann::json& levels, const std::string& png) {
  const std::string data = png + ".dat";
  {
    std::ofstream out(data);
    for (const auto& l : levels) {
      const double level = l.contains("rate") ? l["rate"].get<double>() : l["concurrency"].get<double>();
      out << level << " " << l["output_tokens_per_s"].get<double>() << " "
          << 1e3 * l["ttft_s"]["p50"].get<double>() << " " << 1e3 * l["itl_s"]["p50"].get<double>()
          << " " << 1e3 * l["itl_s"]["p99"].get<double>() << "\n";
    }
  }
  FILE* gnuplot = popen("gnuplot", "w");
  if (gnuplot == nullptr) return false;
  std::fprintf(gnuplot,
               "set terminal png size 900,600\nset output '%s'\n"
               "set title 'fwp-loadtest: throughput vs latency (labels: level)'\n"
               "set xlabel 'output tokens/s'\nset ylabel 'latency (ms)'\nset logscale y\n"
               "set grid\nset key top left\n"
               "plot '%s' using 2:3 with linespoints title 'TTFT p50', "
               "'' using 2:4 with linespoints title 'inter-token p50', "
               "'' using 2:5 with linespoints title 'inter-token p99', "
               "'' using 2:3:(sprintf('%%g', $1)) with labels offset 0,1 notitle\n",
               png.c_str(), data.c_str());
  const bool ok = pclose(gnuplot) == 0;
  std::remove(data.c_str());
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv, "load fwp-server and report throughput and latency");
  std::signal(SIGPIPE, SIG_IGN);  // a gnuplot that is missing or dies must not kill the run
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "closed" && mode != "open" && mode != "chat") {
    std::fprintf(stderr, "fwp-loadtest: --mode must be closed, open or chat\n");
    return 2;
  }
  Range check;
  if (!ParseRange(absl::GetFlag(FLAGS_prompt_tokens), &check) ||
      !ParseRange(absl::GetFlag(FLAGS_max_tokens), &check)) {
    std::fprintf(stderr, "fwp-loadtest: --prompt_tokens and --max_tokens are MIN:MAX with 1 ≤ MIN ≤ MAX\n");
    return 2;
  }
  std::vector<double> levels;
  for (absl::string_view s : absl::StrSplit(mode == "open" ? absl::GetFlag(FLAGS_rates)
                                                           : absl::GetFlag(FLAGS_levels), ',')) {
    double v;
    if (!absl::SimpleAtod(s, &v) || v <= 0 || (mode != "open" && v != std::floor(v))) {
      std::fprintf(stderr, "fwp-loadtest: bad level \"%s\"\n", std::string(s).c_str());
      return 2;
    }
    levels.push_back(v);
  }
  if (absl::GetFlag(FLAGS_requests) < 1 || absl::GetFlag(FLAGS_duration_s) <= 0) {
    std::fprintf(stderr, "fwp-loadtest: --requests and --duration_s must be positive\n");
    return 2;
  }
  if (!(absl::GetFlag(FLAGS_drain_s) >= 0)) {
    std::fprintf(stderr, "fwp-loadtest: --drain_s must be ≥ 0\n");
    return 2;
  }
  fwp::client::ChannelOptions options = fwp::client::ChannelOptionsFromFlags();
  auto channel = fwp::client::MakeChannel(options);
  if (!channel.ok()) {
    std::fprintf(stderr, "fwp-loadtest: %s\n", std::string(channel.status().message()).c_str());
    return 2;
  }
  fwp::v1::ModelInfoResponse info;
  {
    auto stub = fwp::v1::Fwp::NewStub(*channel);
    grpc::ClientContext context;
    fwp::client::PrepareContext(context, options, "", std::chrono::seconds(10));
    grpc::Status status = stub->ModelInfo(&context, fwp::v1::ModelInfoRequest(), &info);
    if (!status.ok()) {
      std::fprintf(stderr, "fwp-loadtest: %s: %s\n", options.address.c_str(),
                   fwp::client::Describe(status).c_str());
      return 1;
    }
  }
  std::printf("fwp-loadtest: %s mode against %s (%s, backend %s), prompts %s tokens, outputs %s "
              "tokens, ≤ %d requests and ≤ %g s per level\n",
              mode.c_str(), options.address.c_str(), info.replica().c_str(), info.backend().c_str(),
              absl::GetFlag(FLAGS_prompt_tokens).c_str(), absl::GetFlag(FLAGS_max_tokens).c_str(),
              absl::GetFlag(FLAGS_requests), absl::GetFlag(FLAGS_duration_s));
  LoadTest test(*channel, options, info.vocab_size());
  nlohmann::json report = nlohmann::json::array();
  for (double level : levels) {
    report.push_back(test.RunLevel(mode, level));
    std::fprintf(stderr, "  level %g done\n", level);
  }
  PrintTable(report);
  if (const std::string path = absl::GetFlag(FLAGS_json_out); !path.empty()) {
    nlohmann::json doc = {{"address", options.address}, {"mode", mode},
                          {"prompt_tokens", absl::GetFlag(FLAGS_prompt_tokens)},
                          {"max_tokens", absl::GetFlag(FLAGS_max_tokens)},
                          {"backend", info.backend()}, {"levels", report}};
    std::ofstream out(path);
    out << doc.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "fwp-loadtest: cannot write %s\n", path.c_str());
      return 1;
    }
  }
  if (const std::string path = absl::GetFlag(FLAGS_plot_out); !path.empty()) {
    if (!Plot(report, path)) std::fprintf(stderr, "fwp-loadtest: gnuplot failed; no plot\n");
  }
  return 0;
}
