#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <cblas.h>

#include "absl/strings/str_cat.h"
#include "kernels/adamw.h"
#include <unistd.h>

#include "kernels/backend.h"
#include "kernels/sampling.h"
#include "kernels/cross_entropy.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/matmul.h"

namespace fwp {
namespace {

class CpuBackend final : public Backend {
 public:
  const char* Name() const override { return "cpu"; }
  absl::Status CheckAttention(const FastWeightSpec&) const override {
    return absl::OkStatus();
  }

  absl::StatusOr<void*> AllocateRaw(size_t bytes) override {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple.
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu backend: cannot allocate ", bytes, " bytes"));
    }
    return p;
  }
  void FreeRaw(void* ptr) override { std::free(ptr); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void Zero(void* dst, size_t bytes) override {
    if (bytes) std::memset(dst, 0, bytes);
  }
  void Synchronize() override {}
  int64_t AvailableBytes() const override {
    return static_cast<int64_t>(sysconf(_SC_AVPHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  }

  // Batch-invariant by default (serving); off (training), the forward
  // matmul goes through OpenBLAS as the backward's already does.
  void SetBatchInvariant(bool on) override { batch_invariant_ = on; }
  bool batch_invariant() const override { return batch_invariant_; }
  void Matmul(const float* a, const float* b, const float* bias, float* c,
              int64_t m, int64_t n, int64_t k, bool accumulate) override {
    if (batch_invariant_) {
      cpu::Matmul(a, b, bias, c, m, n, k, accumulate);
    } else {
      cpu::MatmulBlas(a, b, bias, c, m, n, k, accumulate);
    }
  }
  void Embedding(const int32_t* tokens, const int64_t* positions, int64_t n,
                 const float* table, int64_t d, float* out) override {
    cpu::Embedding(tokens, positions, n, table, d, out);
  }
  void LayerNorm(const float* x, const float* gamma, const float* beta,
                 int64_t rows, int64_t d, float eps, float* y) override {
    cpu::LayerNorm(x, gamma, beta, rows, d, eps, y);
  }
  void Activate(Activation act, float* x, int64_t n) override {
    cpu::Activate(act, x, n);
  }
  void FeatureMap(const FeatureMapSpec& spec, const float* x, int64_t rows,
                  int64_t d, int64_t x_stride, const float* favor_proj,
                  float* phi) override {
    cpu::FeatureMap(spec, x, rows, d, x_stride, favor_proj, phi);
  }
  void FastWeightSequence(const FastWeightSpec& spec, const float* qkvb,
                          const float* favor_proj, const int32_t* slots,
                          int64_t batch, int64_t time, const StateView& state,
                          float* y, int64_t chunk) override {
    cpu::FastWeightSequence(spec, qkvb, favor_proj, slots, batch, time, state,
                            y, chunk);
  }
  void FastWeightStep(const FastWeightSpec& spec, const float* qkvb,
                      const float* favor_proj, const int32_t* slots, int64_t n,
                      const StateView& state, float* y) override {
    cpu::FastWeightStep(spec, qkvb, favor_proj, slots, n, state, y);
  }

  void MatmulBackward(const float* dc, const float* a, const float* b, float* da, float* db,
                      float* dbias, int64_t m, int64_t n, int64_t k) override {
    cpu::MatmulBackward(dc, a, b, da, db, dbias, m, n, k);
  }
  void EmbeddingBackward(const int32_t* tokens, int64_t n, const float* dout, int64_t d,
                         float* dtable) override {
    cpu::EmbeddingBackward(tokens, n, dout, d, dtable);
  }
  void LayerNormBackward(const float* x, const float* gamma, const float* dy, int64_t rows,
                         int64_t d, float eps, float* dx, float* dgamma,
                         float* dbeta) override {
    cpu::LayerNormBackward(x, gamma, dy, rows, d, eps, dx, dgamma, dbeta);
  }
  void ActivateBackward(Activation act, const float* x, const float* dy, int64_t n,
                        float* dx) override {
    cpu::ActivateBackward(act, x, dy, n, dx);
  }
  void FeatureMapBackward(const FeatureMapSpec& spec, const float* x, int64_t rows, int64_t d,
                          int64_t x_stride, const float* favor_proj, const float* dphi,
                          float* dx, int64_t dx_stride) override {
    cpu::FeatureMapBackward(spec, x, rows, d, x_stride, favor_proj, dphi, dx, dx_stride);
  }
  void FastWeightSequenceBackward(const FastWeightSpec& spec, const float* qkvb,
                                  const float* favor_proj, const int32_t* slots, int64_t batch,
                                  int64_t time, const StateView& state, const float* dy,
                                  float* dqkvb, const StateView& dstate,
                                  int64_t chunk) override {
    cpu::FastWeightSequenceBackward(spec, qkvb, favor_proj, slots, batch, time, state, dy,
                                    dqkvb, dstate, chunk);
  }
  void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                           int64_t vocab, float* losses, float* dlogits, float dloss) override {
    cpu::SoftmaxCrossEntropy(logits, targets, rows, vocab, losses, dlogits, dloss);
  }
  void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
             const AdamWParams& params) override {
    cpu::AdamW(param, grad, m, v, n, params);
  }
  double SumSquares(const float* x, int64_t n) override { return cpu::SumSquares(x, n); }
  absl::Status ApplyPenalties(float* logits, int64_t vocab, const LogitPenalty* penalties,
                              int64_t n) override {
    cpu::ApplyPenalties(logits, vocab, penalties, n);
    return absl::OkStatus();
  }
  absl::Status SetPenaltyCounts(int32_t* table, int64_t vocab, const PenaltyCount* entries,
                                int64_t n) override {
    cpu::SetPenaltyCounts(table, vocab, entries, n);
    return absl::OkStatus();
  }
  absl::Status ApplyPenaltyRows(float* logits, int64_t vocab, const int32_t* table,
                                const PenaltyRow* rows, int64_t n) override {
    cpu::ApplyPenaltyRows(logits, vocab, table, rows, n);
    return absl::OkStatus();
  }

  absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                          const RowSampling* sampling, int32_t* tokens) override {
    cpu::SampleRows(logits, rows, vocab, sampling, tokens);
    return absl::OkStatus();
  }

 private:
  bool batch_invariant_ = true;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend() {
  // Our ops parallelise over heads and columns with CpuThreadPool; the small
  // per-chunk GEMMs inside them run single-threaded in BLAS, so that two
  // thread pools never compete for the same cores.
  openblas_set_num_threads(1);
  return std::make_unique<CpuBackend>();
}

}  // namespace fwp
