// fwp-bench-gpu: GPU figures for the CUDA backend, through the Backend
// interface (what the model and the server use).
//   ceilings   device-to-device copy GB/s; cuBLAS float32 GEMM TFLOP/s
//   decode     the fused fast-weight step alone (GB/s of state moved, as a
//              fraction of the copy ceiling) and the whole model Step
//              (tokens/s, fraction of its roofline) at 1..1024 slots for
//              16 layers, d_model 512, 8 heads × 64, DPFP ν=1, vocab 8192
//   sequence   fast-weight memory forward and backward, batch 8, 16 heads ×
//              64, DPFP ν=1, lengths 512 / 2048 / 8192: tokens/s
//
//   build/bin/fwp-bench-gpu [--seconds 1]
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

#include "absl/flags/flag.h"
#include "bench/timing.h"
#include "bench/sampler.h"
#include "bench/training.h"
#include "cli/flags.h"
#include "kernels/backend.h"
#include "kernels/random.h"
#include "model/model.h"

ABSL_FLAG(double, seconds, 1.0, "minimum time per measurement");
ABSL_FLAG(int, device, 0, "CUDA device");
ABSL_FLAG(std::string, train_config, "models/default.json", "model config of the training measurement");
ABSL_FLAG(bool, batch_invariant, true, "decode with the batch-invariant matmul (as the "
          "server does); false: cuBLAS");

namespace {

double TimePerCall(fwp::Backend& gpu, const std::function<void()>& fn) {
  return fwp::bench::TimePerCall(absl::GetFlag(FLAGS_seconds), fn, &gpu);
}

fwp::Buffer RandomBuffer(fwp::Backend& gpu, int64_t n, fwp::Rng& rng, double scale = 1.0) {
  std::vector<float> host(n);
  for (float& x : host) x = static_cast<float>(rng.Normal() * scale);
  auto buffer = fwp::Buffer::Allocate(gpu, n * sizeof(float));
  if (!buffer.ok()) {
    std::fprintf(stderr, "%s\n", buffer.status().ToString().c_str());
    std::exit(1);
  }
  gpu.CopyToDevice(buffer->data(), host.data(), n * sizeof(float));
  return std::move(*buffer);
}

struct Ceilings {
  double copy_gbs = 0, gemm_tflops = 0;
};

Ceilings MeasureCeilings(fwp::Backend& gpu) {
  Ceilings c;
  fwp::Rng rng(1);
  const int64_t n = int64_t{1} << 28;  // 1 GiB
  auto src = RandomBuffer(gpu, n / 4, rng), dst = RandomBuffer(gpu, n / 4, rng);
  const double t_copy = TimePerCall(gpu, [&] { gpu.CopyOnDevice(dst.data(), src.data(), n); });
  c.copy_gbs = 2.0 * n / t_copy / 1e9;  // read + write
  const int64_t s = 4096;
  auto a = RandomBuffer(gpu, s * s, rng), b = RandomBuffer(gpu, s * s, rng), out = RandomBuffer(gpu, s * s, rng);
  const double t_gemm = TimePerCall(gpu, [&] {
    gpu.Matmul(a.f32(), b.f32(), nullptr, out.f32(), s, s, s, false);
  });
  c.gemm_tflops = 2.0 * s * s * s / t_gemm / 1e12;
  std::printf("ceilings: device copy %.0f GB/s (read+write), cuBLAS SGEMM 4096^3 %.1f TFLOP/s\n",
              c.copy_gbs, c.gemm_tflops);
  return c;
}

fwp::Config DecodeConfig() {
  fwp::Config c;
  c.vocab_size = 8192;
  c.d_model = 512;
  c.n_layers = 16;
  c.n_heads = 8;
  c.d_head = 64;
  c.d_ff = 2048;
  c.feature_map.kind = fwp::FeatureMapKind::kDpfp;
  c.feature_map.nu = 1;
  return c;
}

void Decode(fwp::Backend& gpu, const Ceilings& ceil) {
  const fwp::Config config = DecodeConfig();
  auto model = fwp::Model::Create(gpu, config, fwp::RandomWeights(config, 1));
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return;
  }
  const fwp::FastWeightSpec spec = config.Attention();
  const int64_t state_bytes = fwp::StateLayout::For(config).SlotBytes();
  const double weight_bytes = 4.0 * config.ParameterCount();
  std::printf("\ndecode: %lld parameters, state %lld bytes/session\n",
              (long long)config.ParameterCount(), (long long)state_bytes);
  std::printf("%6s | %14s %9s %7s | %12s %9s %9s\n", "slots", "fw-step GB/s", "us/layer",
              "of copy", "tokens/s", "ms/step", "roofline");
  fwp::Rng rng(2);
  for (int slots : {1, 16, 64, 256, 1024}) {
    auto pool = (*model)->NewStatePool(slots);
    if (!pool.ok()) {
      std::printf("%6d | %s\n", slots, pool.status().ToString().c_str());
      continue;
    }
    std::vector<int32_t> slot_ids(slots), tokens(slots);
    for (int i = 0; i < slots; ++i) {
      slot_ids[i] = i;
      tokens[i] = static_cast<int32_t>(rng.Next() % config.vocab_size);
    }
    // The fast-weight step of one layer on its own.
    auto qkvb = RandomBuffer(gpu, slots * spec.RowWidth(), rng, 0.3);
    auto y = RandomBuffer(gpu, slots * spec.heads * spec.d_head, rng);
    auto ids = fwp::Buffer::Allocate(gpu, slots * sizeof(int32_t));
    gpu.CopyToDevice(ids->data(), slot_ids.data(), slots * sizeof(int32_t));
    const fwp::StateView view = (*pool)->View(0);
    const double t_fw = TimePerCall(gpu, [&] {
      gpu.FastWeightStep(spec, qkvb.f32(), nullptr, static_cast<const int32_t*>(ids->data()),
                         slots, view, y.f32());
    });
    const double fw_bytes = 2.0 * slots * state_bytes / config.n_layers;  // read + write
    const double fw_gbs = fw_bytes / t_fw / 1e9;
    // The whole model step (logits copied to the host included).
    std::vector<float> logits(static_cast<size_t>(slots) * config.vocab_size);
    const double t_step = TimePerCall(gpu, [&] {
      auto status = (*model)->Step(**pool, slot_ids, tokens, logits.data());
      if (!status.ok()) std::abort();
    });
    const double bytes = weight_bytes + 2.0 * slots * state_bytes;
    const double flops = 2.0 * config.ParameterCount() * slots;
    const double roofline = std::max(bytes / (ceil.copy_gbs * 1e9), flops / (ceil.gemm_tflops * 1e12));
    std::printf("%6d | %14.0f %9.1f %6.0f%% | %12.0f %9.3f %8.0f%%\n", slots, fw_gbs, t_fw * 1e6,
                100 * fw_gbs / ceil.copy_gbs, slots / t_step, t_step * 1e3, 100 * roofline / t_step);
  }
}

// The fast-weight memory over whole sequences. The roofline counts the
// recurrence's work, 6·d_φ·d_value FLOPs per token and head forward (v̄, the
// update and the read-out) and three times that backward (a recompute and
// twice the forward), against the SGEMM rate; and the projection rows read and
// the outputs written once, against the copy bandwidth. Forward and backward
// run in both of their forms: chunkwise (chunks of 64) and token by token
// (chunk 1 forward; chunk 8 backward, its checkpoint spacing).
void Sequence(fwp::Backend& gpu, const Ceilings& ceil) {
  fwp::FastWeightSpec spec;
  spec.heads = 16;
  spec.d_head = 64;
  spec.phi.kind = fwp::FeatureMapKind::kDpfp;
  spec.phi.nu = 1;
  const int64_t batch = 8, dp = spec.DPhi(), dh = spec.d_head;
  std::printf("\nsequence: batch 8, 16 heads x 64, dpfp(1), delta rule; %% of roofline\n");
  std::printf("%7s | %-28s | %-28s | %-28s | %-28s\n", "", "forward, chunkwise",
              "forward, recurrent", "backward, chunkwise", "backward, recurrent");
  std::printf("%7s |", "length");
  for (int i = 0; i < 4; ++i) std::printf(" %12s %8s %5s |", "tokens/s", "ms", "roof");
  std::printf("\n");
  fwp::Rng rng(3);
  for (int64_t time : {512, 2048, 8192}) {
    auto qkvb = RandomBuffer(gpu, batch * time * spec.RowWidth(), rng, 0.3);
    auto y = RandomBuffer(gpu, batch * time * spec.heads * dh, rng);
    auto dy = RandomBuffer(gpu, batch * time * spec.heads * dh, rng);
    auto dq = RandomBuffer(gpu, batch * time * spec.RowWidth(), rng);
    const int64_t slot_floats = spec.heads * dp * dh;
    auto state = RandomBuffer(gpu, batch * slot_floats, rng, 0.0);
    std::vector<int32_t> slots(batch);
    for (int i = 0; i < batch; ++i) slots[i] = i;
    auto ids = fwp::Buffer::Allocate(gpu, batch * sizeof(int32_t));
    gpu.CopyToDevice(ids->data(), slots.data(), batch * sizeof(int32_t));
    const fwp::StateView view{state.f32(), slot_floats, 0, slot_floats};
    const auto* id = static_cast<const int32_t*>(ids->data());
    auto forward = [&](int64_t chunk) {
      return TimePerCall(gpu, [&] {
        gpu.FastWeightSequence(spec, qkvb.f32(), nullptr, id, batch, time, view, y.f32(), chunk);
      });
    };
    auto backward = [&](int64_t chunk) {
      return TimePerCall(gpu, [&] {
        gpu.FastWeightSequenceBackward(spec, qkvb.f32(), nullptr, id, batch, time, view,
                                       dy.f32(), dq.f32(), fwp::StateView{}, chunk);
      });
    };
    const double t_fwd[2] = {forward(64), forward(1)};
    const double t_bwd[2] = {backward(64), backward(8)};
    const double tokens = static_cast<double>(batch) * time;
    const double flops = tokens * spec.heads * 6.0 * dp * dh;
    const double bytes = tokens * (spec.RowWidth() + spec.heads * dh) * sizeof(float);
    auto roof = [&](double work) {
      return std::max(bytes / (ceil.copy_gbs * 1e9), work / (ceil.gemm_tflops * 1e12));
    };
    std::printf("%7lld |", (long long)time);
    for (const double t : t_fwd) {
      std::printf(" %12.0f %8.2f %4.0f%% |", tokens / t, t * 1e3, 100 * roof(flops) / t);
    }
    for (const double t : t_bwd) {
      std::printf(" %12.0f %8.2f %4.0f%% |", tokens / t, t * 1e3, 100 * roof(3 * flops) / t);
    }
    std::printf("\n");
  }
}

// fwp-train's step (cuBLAS matmuls, as training uses) on the default config,
// against the cuBLAS SGEMM ceiling (counting matmul FLOPs only).
void Training(fwp::Backend& gpu, const Ceilings& ceil) {
  auto config = fwp::Config::FromFile(absl::GetFlag(FLAGS_train_config));
  if (!config.ok()) {
    std::fprintf(stderr, "training: %s\n", config.status().ToString().c_str());
    return;
  }
  std::printf("\ntraining: %s\n", absl::GetFlag(FLAGS_train_config).c_str());
  std::printf("%6s %6s | %12s %12s %9s\n", "batch", "seq", "tokens/s", "matmul TF/s", "of SGEMM");
  for (const auto& [batch, seq] : {std::pair{16, 128}, std::pair{64, 128}, std::pair{64, 512}}) {
    const auto f = fwp::bench::MeasureTraining(gpu, *config, batch, seq, absl::GetFlag(FLAGS_seconds));
    const double tflops = f.tokens_per_s * f.matmul_flops_per_token / 1e12;
    std::printf("%6d %6d | %12.0f %12.2f %8.0f%%\n", batch, seq, f.tokens_per_s, tflops,
                100.0 * tflops / ceil.gemm_tflops);
  }
}

// The sampler: next tokens for `rows` rows of a vocabulary of 8192 (the
// default model's), greedy and top-p 0.9 at temperature 1, on the GPU (only
// tokens come back) and on this machine's CPU backend (from host logits), per
// decode step; and the penalties of chat requests (700 seen tokens a row)
// applied before the draw, from lists uploaded each step and from the
// penalty table (an entry a row sent each step).
void Sampler(fwp::Backend& gpu) {
  const int64_t vocab = 8192;
  auto cpu = fwp::MakeCpuBackend();
  std::printf("\nsampler: vocabulary %lld, per step\n", (long long)vocab);
  std::printf("%6s | %12s %12s | %12s %12s | %14s %14s | %12s %12s\n", "rows", "greedy GPU",
              "greedy CPU", "top-p GPU", "top-p CPU", "penalties GPU", "penalties CPU",
              "table GPU", "table CPU");
  fwp::Rng rng(5);
  for (int64_t rows : {1, 64, 256}) {
    const auto batch = fwp::bench::MakeSamplerBatch(rows, vocab, rng);
    auto logits = fwp::Buffer::Allocate(gpu, batch.logits.size() * sizeof(float));
    gpu.CopyToDevice(logits->data(), batch.logits.data(), batch.logits.size() * sizeof(float));
    auto time = [&](fwp::Backend& b, const float* l, const std::vector<fwp::RowSampling>& s) {
      return fwp::bench::TimeSampleRows(b, l, vocab, s, 0.5) * 1e6;
    };
    const auto penalties = fwp::bench::MakeChatPenalties(rows, vocab, 700, rng);
    std::vector<float> host = batch.logits;
    const double greedy_gpu = time(gpu, logits->f32(), batch.greedy);
    const double greedy_cpu = time(*cpu, batch.logits.data(), batch.greedy);
    const double top_p_gpu = time(gpu, logits->f32(), batch.top_p);
    const double top_p_cpu = time(*cpu, batch.logits.data(), batch.top_p);
    auto table = fwp::bench::MakeChatPenaltyTable(rows, vocab, penalties);
    auto device_table = fwp::Buffer::Allocate(gpu, table.table.size() * sizeof(int32_t));
    gpu.CopyToDevice(device_table->data(), table.table.data(),
                     table.table.size() * sizeof(int32_t));
    auto* gpu_table = static_cast<int32_t*>(device_table->data());
    const double table_gpu =
        fwp::bench::TimeApplyPenaltyRows(gpu, logits->f32(), vocab, gpu_table, table, 0.5);
    const double table_cpu =
        fwp::bench::TimeApplyPenaltyRows(*cpu, host.data(), vocab, table.table.data(), table, 0.5);
    std::printf("%6lld | %10.1fus %10.1fus | %10.1fus %10.1fus | %12.1fus %12.1fus |"
                " %10.1fus %10.1fus\n",
                (long long)rows, greedy_gpu, greedy_cpu, top_p_gpu, top_p_cpu,
                fwp::bench::TimeApplyPenalties(gpu, logits->f32(), vocab, penalties, 0.5) * 1e6,
                fwp::bench::TimeApplyPenalties(*cpu, host.data(), vocab, penalties, 0.5) * 1e6,
                table_gpu * 1e6, table_cpu * 1e6);
  }
}

}  // namespace

int main(int argc, char** argv) {
  fwp::ParseFlags(argc, argv,
      "GPU figures against the measured ceilings\n"
      "\n"
      "  fwp-bench-gpu [--seconds 1]");
  // Line by line, so that a run stopped by a timeout keeps the rows it printed.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  auto gpu = fwp::MakeCudaBackend(absl::GetFlag(FLAGS_device));
  if (gpu.ok()) (*gpu)->SetBatchInvariant(absl::GetFlag(FLAGS_batch_invariant));
  if (!gpu.ok()) {
    std::printf("fwp-bench-gpu: no GPU to measure: %s\n", std::string(gpu.status().message()).c_str());
    return 1;
  }
  std::printf("backend %s\n", (*gpu)->Name());
  const Ceilings ceilings = MeasureCeilings(**gpu);
  Decode(**gpu, ceilings);
  Sequence(**gpu, ceilings);
  Training(**gpu, ceilings);
  Sampler(**gpu);
  return 0;
}
