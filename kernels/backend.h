// Backend: the memory and the ops of one compute device, behind one interface.
//
// The CPU backend is the reference and the embedded default; the CUDA backend
// (kernels/*.cu) implements the same interface for production. Every pointer an
// op takes lives in the backend's own memory (host memory for the CPU, device
// memory for CUDA); host data enters and leaves only through the Copy methods.
// Ops are enqueued in order on the backend's one stream; Synchronize waits for
// them. A backend is used by one thread at a time (the engine thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/activation.h"
#include "kernels/adamw.h"
#include "kernels/fast_weight.h"
#include "kernels/feature_map.h"
#include "kernels/sampling.h"

namespace fwp {

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const char* Name() const = 0;
  // Sends the calling thread's work to this backend's device. A thread other
  // than the one that made the backend calls it before its first op (the CUDA
  // runtime's current device is per thread, and starts at device 0).
  virtual void BindThread() {}

  // Whether the fast-weight ops of this backend handle `spec` (the CUDA
  // kernels have shape limits); the model asks before it is built.
  virtual absl::Status CheckAttention(const FastWeightSpec& spec) const = 0;

  // Memory. Allocation can fail (RESOURCE_EXHAUSTED) and callers recover.
  virtual absl::StatusOr<void*> AllocateRaw(size_t bytes) = 0;
  virtual void FreeRaw(void* ptr) = 0;
  // Host memory the device copies to and from fastest (page-locked on CUDA),
  // for data that moves between device and host often (the server's host
  // tier). 64-byte aligned. The default is ordinary memory.
  virtual absl::StatusOr<void*> AllocateHost(size_t bytes);
  virtual void FreeHost(void* ptr);
  virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void CopyOnDevice(void* dst, const void* src, size_t bytes) = 0;
  virtual void Zero(void* dst, size_t bytes) = 0;
  virtual void Synchronize() = 0;
  // Batch invariance of Matmul: when on, row i of C has the same bits
  // whatever the number of rows (what exact serving under batching needs);
  // off, the backend may pick the fastest algorithm per shape. The CPU
  // matmul is always invariant; CUDA starts with it on (cuBLAS when off).
  virtual void SetBatchInvariant(bool on) { (void)on; }
  virtual bool batch_invariant() const { return true; }
  // Memory this backend could still allocate: free device memory (CUDA) or
  // available host memory (CPU), in bytes.
  virtual int64_t AvailableBytes() const = 0;

  // Ops; shapes as in the op headers (kernels/<op>.h).
  virtual void Matmul(const float* a, const float* b, const float* bias,
                      float* c, int64_t m, int64_t n, int64_t k,
                      bool accumulate) = 0;
  virtual void Embedding(const int32_t* tokens, const int64_t* positions,
                         int64_t n, const float* table, int64_t d,
                         float* out) = 0;
  virtual void LayerNorm(const float* x, const float* gamma, const float* beta,
                         int64_t rows, int64_t d, float eps, float* y) = 0;
  virtual void Activate(Activation act, float* x, int64_t n) = 0;
  virtual void FeatureMap(const FeatureMapSpec& spec, const float* x,
                          int64_t rows, int64_t d, int64_t x_stride,
                          const float* favor_proj, float* phi) = 0;
  virtual void FastWeightSequence(const FastWeightSpec& spec,
                                  const float* qkvb, const float* favor_proj,
                                  const int32_t* slots, int64_t batch,
                                  int64_t time, const StateView& state,
                                  float* y, int64_t chunk) = 0;
  virtual void FastWeightStep(const FastWeightSpec& spec, const float* qkvb,
                              const float* favor_proj, const int32_t* slots,
                              int64_t n, const StateView& state, float* y) = 0;

  // Backward ops and the optimiser (training); gradient conventions as in the
  // op headers: activation gradients are written (or added where an op says
  // so), parameter gradients accumulate.
  virtual void MatmulBackward(const float* dc, const float* a, const float* b, float* da,
                              float* db, float* dbias, int64_t m, int64_t n, int64_t k) = 0;
  virtual void EmbeddingBackward(const int32_t* tokens, int64_t n, const float* dout,
                                 int64_t d, float* dtable) = 0;
  virtual void LayerNormBackward(const float* x, const float* gamma, const float* dy,
                                 int64_t rows, int64_t d, float eps, float* dx,
                                 float* dgamma, float* dbeta) = 0;
  virtual void ActivateBackward(Activation act, const float* x, const float* dy, int64_t n,
                                float* dx) = 0;
  virtual void FeatureMapBackward(const FeatureMapSpec& spec, const float* x, int64_t rows,
                                  int64_t d, int64_t x_stride, const float* favor_proj,
                                  const float* dphi, float* dx, int64_t dx_stride) = 0;
  virtual void FastWeightSequenceBackward(const FastWeightSpec& spec, const float* qkvb,
                                          const float* favor_proj, const int32_t* slots,
                                          int64_t batch, int64_t time, const StateView& state,
                                          const float* dy, float* dqkvb,
                                          const StateView& dstate, int64_t chunk) = 0;
  virtual void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                                   int64_t vocab, float* losses, float* dlogits,
                                   float dloss) = 0;
  virtual void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
                     const AdamWParams& params) = 0;
  // Σ x², returned to the host (synchronises).
  virtual double SumSquares(const float* x, int64_t n) = 0;

  // Next tokens from rows × vocab logits (backend memory), one per row, by
  // cpu::SampleWithDraw's definition; sampling and tokens are host arrays
  // (synchronises). The logits stay where they are: only tokens come back.
  // Fails (RESOURCE_EXHAUSTED) only when its scratch cannot be allocated.
  virtual absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                                  const RowSampling* sampling, int32_t* tokens) = 0;
  // The requests' penalties applied to their logits (backend memory, rows ×
  // vocab, in place) before SampleRows; penalties is a host array listing
  // each (row, token) once. Fails (RESOURCE_EXHAUSTED, logits untouched) only
  // when its scratch cannot be allocated.
  virtual absl::Status ApplyPenalties(float* logits, int64_t vocab,
                                      const LogitPenalty* penalties, int64_t n) = 0;
  // The penalty table's ops (kernels/sampling.h): table is backend memory,
  // entries and rows host arrays. Both fail (RESOURCE_EXHAUSTED, nothing
  // changed) only when their scratch cannot be allocated.
  virtual absl::Status SetPenaltyCounts(int32_t* table, int64_t vocab,
                                        const PenaltyCount* entries, int64_t n) = 0;
  virtual absl::Status ApplyPenaltyRows(float* logits, int64_t vocab, const int32_t* table,
                                        const PenaltyRow* rows, int64_t n) = 0;
};

// The CPU reference backend.
std::unique_ptr<Backend> MakeCpuBackend();

// The CUDA backend on GPU `device`: UNAVAILABLE when this build has no CUDA
// backend or the device cannot be used, with the reason.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device);

// A backend name as command-line tools take it, with "auto" resolved: "cuda"
// when a usable GPU is present, else "cpu". Other names are returned as given.
std::string ResolveBackendName(const std::string& name);

// A backend by name, as command-line tools take it: "auto", "cpu", "cuda"
// (device 0) or "cuda:N".
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& name);

// A block of backend memory, freed when it goes out of scope. Move-only.
class Buffer {
 public:
  Buffer() = default;
  static absl::StatusOr<Buffer> Allocate(Backend& backend, size_t bytes);
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Release(); }

  void* data() const { return data_; }
  float* f32() const { return static_cast<float*>(data_); }
  size_t bytes() const { return bytes_; }

 private:
  void Release();
  Backend* backend_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace fwp
