// fwp-bench-cpu: CPU figures for the foundation.
//   1. matmul GFLOP/s of our batch-invariant kernel beside OpenBLAS sgemm (the
//      ceiling a BLAS reaches on this machine) at decode and prefill shapes;
//   2. the recurrent step's tokens/s at batch 1, 16, 64 and 256 on a ~5M-parameter
//      config, with the state bytes per session;
//   3. prefill tokens/s (chunked-parallel form) for a 512-token prompt;
//   4. fwp-train's step, the sampler's draws and penalties, and the thread
//      pool's fork-join price.
//
//   build/bin/fwp-bench-cpu [--seconds 2]
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "absl/flags/flag.h"
#include "bench/sampler.h"
#include "bench/timing.h"
#include "bench/training.h"
#include "cli/flags.h"
#include "kernels/matmul.h"
#include "kernels/random.h"
#include "kernels/thread_pool.h"
#include "model/model.h"

ABSL_FLAG(double, seconds, 2.0, "minimum time per measurement");
ABSL_FLAG(std::string, tables, "matmul,model,training,sampler,pool", "which tables to print");
ABSL_FLAG(std::string, train_config, "models/default.json", "model config of the training measurement");

namespace {

double TimePerCall(const std::function<void()>& fn) {
  return fwp::bench::TimePerCall(absl::GetFlag(FLAGS_seconds), fn);
}

std::vector<float> Random(int64_t n, fwp::Rng& rng) {
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(rng.Normal());
  return v;
}

void MatmulTable() {
  std::printf("matmul C[m,n] = A[m,k]·B[n,k]ᵀ, GFLOP/s\n");
  std::printf("%6s %6s %6s  %10s  %10s  %6s\n", "m", "n", "k", "fwp", "openblas", "ratio");
  fwp::Rng rng(1);
  struct Shape { int m, n, k; };
  for (Shape s : {Shape{1, 1024, 256}, Shape{16, 1024, 256}, Shape{16, 8192, 256},
                  Shape{256, 1024, 256}, Shape{512, 1024, 256}, Shape{512, 256, 1024}}) {
    auto a = Random(int64_t(s.m) * s.k, rng), b = Random(int64_t(s.n) * s.k, rng);
    std::vector<float> c(int64_t(s.m) * s.n);
    const double flops = 2.0 * s.m * s.n * s.k;
    const double ours = TimePerCall([&] {
      fwp::cpu::Matmul(a.data(), b.data(), nullptr, c.data(), s.m, s.n, s.k, false);
    });
    const double blas = TimePerCall([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.m, s.n, s.k, 1.0f, a.data(), s.k,
                  b.data(), s.k, 0.0f, c.data(), s.n);
    });
    std::printf("%6d %6d %6d  %10.2f  %10.2f  %6.2f\n", s.m, s.n, s.k, flops / ours / 1e9,
                flops / blas / 1e9, blas / ours);
  }
}

fwp::Config ReferenceConfig() {
  fwp::Config c;  // 4 layers, d_model 256, 4 heads × 64, DPFP ν=1, vocab 8192
  c.vocab_size = 8192;
  c.d_model = 256;
  c.n_layers = 4;
  c.n_heads = 4;
  c.d_head = 64;
  c.d_ff = 1024;
  c.update = fwp::UpdateRule::kDelta;
  c.feature_map.kind = fwp::FeatureMapKind::kDpfp;
  c.feature_map.nu = 1;
  return c;
}

void ModelTable() {
  const fwp::Config config = ReferenceConfig();
  auto backend = fwp::MakeCpuBackend();
  auto model = fwp::Model::Create(*backend, config, fwp::RandomWeights(config, 1));
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return;
  }
  std::printf("\nmodel: %lld parameters, %lld layers, d_model %lld, %lld heads x %lld, "
              "delta + dpfp(1), d_phi %lld\n",
              (long long)config.ParameterCount(), (long long)config.n_layers,
              (long long)config.d_model, (long long)config.n_heads, (long long)config.d_head,
              (long long)config.Attention().DPhi());
  std::printf("state per session: %lld bytes\n", (long long)fwp::StateLayout::For(config).SlotBytes());
  std::printf("%-28s %8s %12s %14s\n", "recurrent step", "batch", "tokens/s", "ms/step");
  for (int batch : {1, 16, 64, 256}) {
    auto pool = (*model)->NewStatePool(batch);
    std::vector<int32_t> slots(batch), tokens(batch);
    for (int i = 0; i < batch; ++i) {
      slots[i] = i;
      tokens[i] = (i * 37) % 8192;
    }
    std::vector<float> logits(batch * config.vocab_size);
    const double t = TimePerCall([&] {
      auto status = (*model)->Step(**pool, slots, tokens, logits.data());
      if (!status.ok()) std::abort();
    });
    std::printf("%-28s %8d %12.1f %14.3f\n", "", batch, batch / t, t * 1e3);
  }
  const int prompt = 512;
  auto pool = (*model)->NewStatePool(1);
  std::vector<int32_t> tokens(prompt);
  for (int i = 0; i < prompt; ++i) tokens[i] = (i * 101) % 8192;
  std::vector<float> logits(config.vocab_size);
  const int32_t slot = 0;
  const double t = TimePerCall([&] {
    (*pool)->Reset(0);
    auto status = (*model)->Prefill(**pool, {&slot, 1}, tokens, false, logits.data());
    if (!status.ok()) std::abort();
  });
  std::printf("%-28s %8d %12.1f %14.3f\n", "prefill 512 tokens (chunk 64)", 1, prompt / t, t * 1e3);
}

// fwp-train's step on the default config, batch 16 × 128 tokens (as the
// shipped model was trained).
void TrainingRow() {
  auto config = fwp::Config::FromFile(absl::GetFlag(FLAGS_train_config));
  if (!config.ok()) {
    std::fprintf(stderr, "training: %s\n", config.status().ToString().c_str());
    return;
  }
  auto backend = fwp::MakeCpuBackend();
  const auto f = fwp::bench::MeasureTraining(*backend, *config, 16, 128, absl::GetFlag(FLAGS_seconds));
  std::printf("\ntraining (%s, batch 16 x 128): %.0f tokens/s, %.1f GFLOP/s in its matmuls\n",
              absl::GetFlag(FLAGS_train_config).c_str(), f.tokens_per_s,
              f.tokens_per_s * f.matmul_flops_per_token / 1e9);
}

// The sampler on the CPU backend: one decode step's draws over the default
// model's vocabulary (8192), and the penalties of chat requests (700 seen
// tokens a row) applied before them, from their lists and from the table.
void SamplerTable() {
  const int64_t vocab = 8192;
  auto cpu = fwp::MakeCpuBackend();
  fwp::Rng rng(5);
  std::printf("\nsampler, vocabulary %lld: us per step\n%6s %10s %10s %12s %10s %8s\n",
              (long long)vocab, "rows", "greedy", "top-p 0.9", "temperature", "penalties", "table");
  for (int64_t rows : {1, 16, 64}) {
    const auto b = fwp::bench::MakeSamplerBatch(rows, vocab, rng);
    const auto penalties = fwp::bench::MakeChatPenalties(rows, vocab, 700, rng);
    std::vector<float> logits = b.logits;
    const double s = absl::GetFlag(FLAGS_seconds) / 4;
    const double greedy = fwp::bench::TimeSampleRows(*cpu, b.logits.data(), vocab, b.greedy, s);
    const double top_p = fwp::bench::TimeSampleRows(*cpu, b.logits.data(), vocab, b.top_p, s);
    const double temperature =
        fwp::bench::TimeSampleRows(*cpu, b.logits.data(), vocab, b.temperature, s);
    auto table = fwp::bench::MakeChatPenaltyTable(rows, vocab, penalties);
    std::printf("%6lld %10.1f %10.1f %12.1f %10.1f %8.1f\n", (long long)rows, greedy * 1e6,
                top_p * 1e6, temperature * 1e6,
                fwp::bench::TimeApplyPenalties(*cpu, logits.data(), vocab, penalties, s) * 1e6,
                fwp::bench::TimeApplyPenaltyRows(*cpu, logits.data(), vocab, table.table.data(),
                                                 table, s) * 1e6);
  }
}

// The fork-join pool's price: one ParallelFor of 16 busy tasks after a gap of
// serial work, with the pool's polling (FWP_CPU_SPIN_US, as CpuThreadPool) and
// with none (spin 0: every call wakes sleeping threads), against the ideal
// (the tasks' time divided among the threads).
void PoolTable() {
  const int threads = fwp::CpuThreadPool().threads();
  fwp::ThreadPool polling(threads, fwp::CpuThreadPool().spin());
  fwp::ThreadPool sleeping(threads, std::chrono::microseconds(0));
  auto busy = [](std::chrono::microseconds d) {
    const auto until = std::chrono::steady_clock::now() + d;
    while (std::chrono::steady_clock::now() < until) {
    }
  };
  std::printf("\nthread pool, %d threads: us per ParallelFor of 16 tasks\n%8s %6s %8s %14s %10s\n",
              threads, "task us", "gap us", "ideal", "polling", "sleeping");
  for (int task : {2, 10}) {
    for (int gap : {0, 50}) {
      std::printf("%8d %6d %8.1f", task, gap, 16.0 * task / threads);
      for (fwp::ThreadPool* pool : {&polling, &sleeping}) {
        const int calls = static_cast<int>(absl::GetFlag(FLAGS_seconds) * 1e6 / 4 / (8 * task + gap)) + 1;
        double total = 0.0;
        for (int c = 0; c < calls; ++c) {
          busy(std::chrono::microseconds(gap));
          const auto t0 = std::chrono::steady_clock::now();
          pool->ParallelFor(16, [&](int64_t) { busy(std::chrono::microseconds(task)); });
          total += std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
        }
        std::printf(pool == &polling ? " %8.1f (%3d)" : " %10.1f", total / calls,
                    static_cast<int>(pool->spin().count()));
      }
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "CPU figures (matmul, decode, prefill, training, sampler, thread pool)\n"
      "\n"
      "  fwp-bench-cpu [--seconds 2] [--tables ...]");
  const std::string tables = absl::GetFlag(FLAGS_tables);
  auto wanted = [&](const std::string& name) {
    for (size_t at = 0; at <= tables.size();) {
      const size_t end = std::min(tables.find(',', at), tables.size());
      if (tables.compare(at, end - at, name) == 0) return true;
      at = end + 1;
    }
    return false;
  };
  if (wanted("matmul")) MatmulTable();
  if (wanted("model")) ModelTable();
  if (wanted("training")) TrainingRow();
  if (wanted("sampler")) SamplerTable();
  if (wanted("pool")) PoolTable();
  return 0;
}
