// The CUDA backend: device memory, one stream, one cuBLAS handle, and the
// CUDA ops (kernels/*.cu). Allocation failures come back as
// RESOURCE_EXHAUSTED so that a server can refuse work instead of crashing;
// a failed launch aborts (cuda_common.cuh).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/device.h"
#include "kernels/status_macros.h"

namespace fwp {
namespace {

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, cudaStream_t stream, cublasHandle_t cublas)
      : device_(device), stream_(stream), cublas_(cublas) {
    name_ = absl::StrCat("cuda:", device);
    // FWP_CUDA_SAMPLER_BYTES: the most scratch the sampler's rows take at
    // once (12 bytes per sampled row and vocabulary entry); more rows are
    // sampled in pieces.
    if (const char* env = std::getenv("FWP_CUDA_SAMPLER_BYTES")) {
      sampler_bytes_ = std::max<int64_t>(std::atoll(env), 1);
    }
  }
  ~CudaBackend() override {
    if (scratch_) cudaFree(scratch_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  const char* Name() const override { return name_.c_str(); }
  void BindThread() override { FWP_CUDA_CHECK("set device", cudaSetDevice(device_)); }
  void SetBatchInvariant(bool on) override { batch_invariant_ = on; }
  bool batch_invariant() const override { return batch_invariant_; }

  absl::Status CheckAttention(const FastWeightSpec& spec) const override {
    const char* why = "";
    if (!cuda::FastWeightSupported(spec, &why)) return absl::InvalidArgumentError(why);
    return absl::OkStatus();
  }

  absl::StatusOr<void*> AllocateRaw(size_t bytes) override {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1));
    if (err != cudaSuccess) {
      cudaGetLastError();  // allocation failures are not sticky; clear it
      return absl::ResourceExhaustedError(absl::StrCat(
          "cuda:", device_, ": cannot allocate ", bytes, " bytes: ", cudaGetErrorString(err)));
    }
    return p;
  }
  void FreeRaw(void* ptr) override { FWP_CUDA_CHECK("free", cudaFree(ptr)); }
  absl::StatusOr<void*> AllocateHost(size_t bytes) override {
    void* p = nullptr;
    cudaError_t err = cudaHostAlloc(&p, std::max<size_t>(bytes, 1), cudaHostAllocDefault);
    if (err != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat(
          "cannot allocate ", bytes, " bytes of page-locked host memory: ", cudaGetErrorString(err)));
    }
    return p;
  }
  void FreeHost(void* ptr) override { FWP_CUDA_CHECK("free host", cudaFreeHost(ptr)); }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes) {
      FWP_CUDA_CHECK("copy to device",
                     cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    }
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes) {
      FWP_CUDA_CHECK("copy to host",
                     cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    }
    Synchronize();
  }
  void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
    if (bytes) {
      FWP_CUDA_CHECK("copy on device",
                     cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
  }
  void Zero(void* dst, size_t bytes) override {
    if (bytes) FWP_CUDA_CHECK("zero", cudaMemsetAsync(dst, 0, bytes, stream_));
  }
  void Synchronize() override { FWP_CUDA_CHECK("synchronize", cudaStreamSynchronize(stream_)); }
  int64_t AvailableBytes() const override {
    size_t free = 0, total = 0;
    if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
    return static_cast<int64_t>(free);
  }

  void Matmul(const float* a, const float* b, const float* bias, float* c, int64_t m,
              int64_t n, int64_t k, bool accumulate) override {
    if (batch_invariant_) {
      cuda::InvariantMatmul(stream_, a, b, bias, c, m, n, k, accumulate);
    } else {
      cuda::Matmul(cublas_, stream_, a, b, bias, c, m, n, k, accumulate);
    }
  }
  void Embedding(const int32_t* tokens, const int64_t* positions, int64_t n, const float* table,
                 int64_t d, float* out) override {
    cuda::Embedding(stream_, tokens, positions, n, table, d, out);
  }
  void LayerNorm(const float* x, const float* gamma, const float* beta, int64_t rows, int64_t d,
                 float eps, float* y) override {
    cuda::LayerNorm(stream_, x, gamma, beta, rows, d, eps, y);
  }
  void Activate(Activation act, float* x, int64_t n) override {
    cuda::Activate(stream_, act, x, n);
  }
  void FeatureMap(const FeatureMapSpec& spec, const float* x, int64_t rows, int64_t d,
                  int64_t x_stride, const float* favor_proj, float* phi) override {
    cuda::FeatureMap(stream_, spec, x, rows, d, x_stride, favor_proj, phi);
  }
  void FastWeightSequence(const FastWeightSpec& spec, const float* qkvb,
                          const float* favor_proj, const int32_t* slots, int64_t batch,
                          int64_t time, const StateView& state, float* y,
                          int64_t chunk) override {
    cuda::FastWeightSequence(stream_, spec, qkvb, favor_proj, slots, batch, time, state, y,
                             chunk);
  }
  void FastWeightStep(const FastWeightSpec& spec, const float* qkvb, const float* favor_proj,
                      const int32_t* slots, int64_t n, const StateView& state,
                      float* y) override {
    cuda::FastWeightStep(stream_, spec, qkvb, favor_proj, slots, n, state, y);
  }

  void MatmulBackward(const float* dc, const float* a, const float* b, float* da, float* db,
                      float* dbias, int64_t m, int64_t n, int64_t k) override {
    float* scratch = dbias != nullptr ? Scratch(cuda::MatmulBackwardScratch(m, n)) : nullptr;
    cuda::MatmulBackward(cublas_, stream_, dc, a, b, da, db, dbias, m, n, k, scratch);
  }
  void EmbeddingBackward(const int32_t* tokens, int64_t n, const float* dout, int64_t d,
                         float* dtable) override {
    cuda::EmbeddingBackward(stream_, tokens, n, dout, d, dtable);
  }
  void LayerNormBackward(const float* x, const float* gamma, const float* dy, int64_t rows,
                         int64_t d, float eps, float* dx, float* dgamma,
                         float* dbeta) override {
    cuda::LayerNormBackward(stream_, x, gamma, dy, rows, d, eps, dx, dgamma, dbeta,
                            Scratch(cuda::LayerNormBackwardScratch(rows, d)));
  }
  void ActivateBackward(Activation act, const float* x, const float* dy, int64_t n,
                        float* dx) override {
    cuda::ActivateBackward(stream_, act, x, dy, n, dx);
  }
  void FeatureMapBackward(const FeatureMapSpec& spec, const float* x, int64_t rows, int64_t d,
                          int64_t x_stride, const float* favor_proj, const float* dphi,
                          float* dx, int64_t dx_stride) override {
    cuda::FeatureMapBackward(stream_, spec, x, rows, d, x_stride, favor_proj, dphi, dx,
                             dx_stride);
  }
  void FastWeightSequenceBackward(const FastWeightSpec& spec, const float* qkvb,
                                  const float* favor_proj, const int32_t* slots, int64_t batch,
                                  int64_t time, const StateView& state, const float* dy,
                                  float* dqkvb, const StateView& dstate,
                                  int64_t chunk) override {
    float* scratch = Scratch(cuda::FastWeightBackwardScratch(spec, batch, time, chunk));
    cuda::FastWeightSequenceBackward(stream_, spec, qkvb, favor_proj, slots, batch, time, state,
                                     dy, dqkvb, dstate, chunk, scratch);
  }
  void SoftmaxCrossEntropy(const float* logits, const int32_t* targets, int64_t rows,
                           int64_t vocab, float* losses, float* dlogits, float dloss) override {
    cuda::SoftmaxCrossEntropy(stream_, logits, targets, rows, vocab, losses, dlogits, dloss);
  }
  void AdamW(float* param, const float* grad, float* m, float* v, int64_t n,
             const AdamWParams& params) override {
    cuda::AdamW(stream_, param, grad, m, v, n, params);
  }
  double SumSquares(const float* x, int64_t n) override {
    if (n == 0) return 0.0;
    const int blocks = cuda::SumSquaresBlocks(n);
    auto* partial = reinterpret_cast<double*>(Scratch(2 * blocks));
    cuda::SumSquares(stream_, x, n, partial);
    std::vector<double> host(blocks);
    CopyToHost(host.data(), partial, blocks * sizeof(double));
    double total = 0.0;
    for (double v : host) total += v;
    return total;
  }

  absl::Status ApplyPenalties(float* logits, int64_t vocab, const LogitPenalty* penalties,
                              int64_t n) override {
    if (n == 0) return absl::OkStatus();
    FWP_ASSIGN_OR_RETURN(void* scratch, TryScratch(n * sizeof(LogitPenalty)));
    cuda::ApplyPenalties(stream_, logits, vocab, penalties, n, scratch);
    return absl::OkStatus();
  }
  absl::Status SetPenaltyCounts(int32_t* table, int64_t vocab, const PenaltyCount* entries,
                                int64_t n) override {
    if (n == 0) return absl::OkStatus();
    FWP_ASSIGN_OR_RETURN(void* scratch, TryScratch(n * sizeof(PenaltyCount)));
    cuda::SetPenaltyCounts(stream_, table, vocab, entries, n, scratch);
    return absl::OkStatus();
  }
  absl::Status ApplyPenaltyRows(float* logits, int64_t vocab, const int32_t* table,
                                const PenaltyRow* rows, int64_t n) override {
    if (n == 0) return absl::OkStatus();
    FWP_ASSIGN_OR_RETURN(void* scratch, TryScratch(n * sizeof(PenaltyRow)));
    cuda::ApplyPenaltyRows(stream_, logits, vocab, table, rows, n, scratch);
    return absl::OkStatus();
  }

  absl::Status SampleRows(const float* logits, int64_t rows, int64_t vocab,
                          const RowSampling* sampling, int32_t* tokens) override {
    // Rows are drawn each on its own, so pieces change no token: each piece
    // holds as many sampled (non-greedy) rows as sampler_bytes_ allows (at
    // 4,096 rows of a 128k vocabulary, all at once would hold 6.4 GB).
    const int64_t most = std::max<int64_t>(
        1, sampler_bytes_ / (vocab * static_cast<int64_t>(sizeof(uint64_t) + sizeof(uint32_t))));
    std::vector<int32_t> work(rows, -1);
    for (int64_t first = 0; first < rows;) {
      int32_t sampled = 0;
      int64_t end = first;
      for (; end < rows; ++end) {
        const bool greedy = sampling[end].params.greedy();
        if (!greedy && sampled == most) break;
        work[end - first] = greedy ? -1 : sampled++;
      }
      FWP_ASSIGN_OR_RETURN(void* scratch,
                           TryScratch(cuda::SampleScratchBytes(end - first, sampled, vocab)));
      cuda::SampleRows(stream_, logits + first * vocab, end - first, vocab, sampling + first,
                       work.data(), sampled, tokens + first, scratch);
      first = end;
    }
    return absl::OkStatus();
  }

 private:
  // Device scratch of at least `bytes`, kept between ops (one stream, so an
  // op's scratch is free again once the next op is enqueued). Running out of
  // memory is an error the caller sees (the sampler, on the serving path).
  absl::StatusOr<void*> TryScratch(size_t bytes) {
    if (bytes > scratch_bytes_) {
      Synchronize();  // the old scratch may still be in use
      if (scratch_) FWP_CUDA_CHECK("scratch free", cudaFree(scratch_));
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      FWP_ASSIGN_OR_RETURN(scratch_, AllocateRaw(bytes));
      scratch_bytes_ = bytes;
    }
    return scratch_;
  }
  // Scratch of at least `floats` for the training ops, where running out of
  // memory is fatal.
  float* Scratch(int64_t floats) {
    auto scratch = TryScratch(static_cast<size_t>(floats) * sizeof(float));
    if (!scratch.ok()) {
      std::fprintf(stderr, "fwp: %s\n", std::string(scratch.status().message()).c_str());
      std::abort();
    }
    return static_cast<float*>(*scratch);
  }

  int device_;
  cudaStream_t stream_;
  cublasHandle_t cublas_;
  bool batch_invariant_ = true;
  std::string name_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  int64_t sampler_bytes_ = int64_t{256} << 20;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(int device) {
  std::string why;
  const int count = CudaDeviceCount(&why);
  if (count == 0) return absl::UnavailableError(why);
  if (device < 0 || device >= count) {
    return absl::UnavailableError(
        absl::StrCat("CUDA device ", device, " does not exist (", count, " present)"));
  }
  cudaError_t err = cudaSetDevice(device);
  if (err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cudaSetDevice(", device, "): ",
                                               cudaGetErrorString(err)));
  }
  if (!CudaDeviceRunsThisBuild(device, &why)) return absl::UnavailableError(why);
  cudaStream_t stream;
  err = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (err != cudaSuccess) {
    return absl::UnavailableError(absl::StrCat("cannot create a stream: ", cudaGetErrorString(err)));
  }
  cublasHandle_t cublas;
  if (cublasCreate(&cublas) != CUBLAS_STATUS_SUCCESS) {
    cudaStreamDestroy(stream);
    return absl::UnavailableError("cannot create a cuBLAS handle");
  }
  // Plain float32 (no TF32 or reduced-precision reductions): the GPU must
  // agree with the CPU reference to 1e-5. cuBLAS on any other stream than the
  // kernels' (non-blocking) one would race them.
  if (cublasSetMathMode(cublas, CUBLAS_PEDANTIC_MATH) != CUBLAS_STATUS_SUCCESS ||
      cublasSetStream(cublas, stream) != CUBLAS_STATUS_SUCCESS) {
    cublasDestroy(cublas);
    cudaStreamDestroy(stream);
    return absl::UnavailableError("cannot set up the cuBLAS handle (math mode, stream)");
  }
  return std::unique_ptr<Backend>(new CudaBackend(device, stream, cublas));
}

}  // namespace fwp
