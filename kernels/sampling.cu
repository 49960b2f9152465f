// Token sampling on the GPU (see sampling.h): one block per row, so a row's
// token depends on its logits and its draw only, never on the batch.
//
//   greedy rows   a block argmax (the lowest id among equal maxima);
//   sampled rows  each candidate's order and integer weight (the math::
//                 functions the CPU runs, so the same bits) go to scratch;
//                 top-k and top-p are radix selections on the order (block
//                 histograms of counts or weights, 11 + 11 + 10 bits, then
//                 the equal orders in id order by a block scan); the draw is
//                 a block scan of the kept weights in id order. Every sum is
//                 an integer sum, so the parallel order cannot change the
//                 token: it is the CPU's, exactly.
#include <algorithm>

#include "kernels/cuda_common.cuh"
#include "kernels/cuda_ops.h"
#include "kernels/shared_math.h"

namespace fwp::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kBuckets = 2048;

// Exclusive prefix sum of one value per thread over the block, in thread
// order; `total` gets the whole sum. `scan` holds blockDim.x values of shared
// memory. Starts and ends with a barrier.
__device__ uint64_t BlockScan(uint64_t v, uint64_t* scan, uint64_t* total) {
  const unsigned t = threadIdx.x;
  __syncthreads();
  scan[t] = v;
  __syncthreads();
  for (unsigned offset = 1; offset < blockDim.x; offset <<= 1) {
    const uint64_t add = t >= offset ? scan[t - offset] : 0;
    __syncthreads();
    scan[t] += add;
    __syncthreads();
  }
  const uint64_t inclusive = scan[t];
  *total = scan[blockDim.x - 1];
  __syncthreads();
  return inclusive - v;
}

// A row's candidates in scratch, and this thread's contiguous run of ids
// for the passes in id order.
struct Row : math::SampleCandidates {
  __device__ int64_t RunBegin() const {
    return min(vocab, threadIdx.x * ((vocab + blockDim.x - 1) / blockDim.x));
  }
  __device__ int64_t RunEnd() const {
    return min(vocab, (threadIdx.x + 1) * ((vocab + blockDim.x - 1) / blockDim.x));
  }
};

struct SelectShared {
  uint64_t bucket[kBuckets];
  uint64_t scan[kThreads];
  uint64_t before, key;
  uint32_t digit;
};

// The smallest key K such that the candidates with keys ≤ K (and ≤ limit)
// weigh at least `target` (cpu::SampleWithDraw's SelectKey, by the block).
__device__ uint64_t SelectKey(const Row& row, uint64_t target, SelectShared& sh) {
  constexpr int kShift[3] = {21, 10, 0};
  uint32_t prefix = 0, mask = 0;
  uint64_t before = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int shift = kShift[pass];
    const uint32_t digits = pass == 2 ? 0x3ffu : 0x7ffu;
    for (int b = threadIdx.x; b < kBuckets; b += blockDim.x) sh.bucket[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      if (row.In(i) && (row.order[i] & mask) == prefix) {
        atomicAdd(reinterpret_cast<unsigned long long*>(&sh.bucket[(row.order[i] >> shift) & digits]),
                  static_cast<unsigned long long>(row.Weight(i)));
      }
    }
    __syncthreads();
    // Thread t holds buckets [t·per, (t+1)·per) in order.
    const int per = kBuckets / blockDim.x;
    uint64_t mine = 0;
    for (int b = 0; b < per; ++b) mine += sh.bucket[threadIdx.x * per + b];
    uint64_t total;
    uint64_t run = before + BlockScan(mine, sh.scan, &total);
    if (before + total < target) return row.limit;  // out of reach (the same for every thread)
    if (run < target && target <= run + mine) {
      int b = threadIdx.x * per;
      while (run + sh.bucket[b] < target) run += sh.bucket[b++];
      sh.digit = static_cast<uint32_t>(b);
      sh.before = run;
    }
    __syncthreads();
    prefix |= sh.digit << shift;
    mask |= digits << shift;
    before = sh.before;
  }
  // The order is `prefix`; its candidates count in id order.
  const auto tie = [&](int64_t i) { return row.In(i) && row.order[i] == prefix; };
  uint64_t mine = 0;
  for (int64_t i = row.RunBegin(); i < row.RunEnd(); ++i) mine += tie(i) ? row.Weight(i) : 0;
  uint64_t total;
  uint64_t run = before + BlockScan(mine, sh.scan, &total);
  if (run < target && target <= run + mine) {
    for (int64_t i = row.RunBegin(); i < row.RunEnd(); ++i) {
      if (!tie(i)) continue;
      run += row.Weight(i);
      if (run >= target) {
        sh.key = math::SampleKey(prefix, i);
        break;
      }
    }
  }
  __syncthreads();
  return before + total < target ? row.limit : sh.key;
}

// work[row]: the row's place in the scratch of sampled rows.
__global__ void __launch_bounds__(kThreads) SampleKernel(const float* logits, int64_t vocab,
                             const RowSampling* sampling, const int32_t* work, uint32_t* orders,
                             uint64_t* weights, int32_t* tokens) {
  const int64_t row = blockIdx.x;
  const float* l = logits + row * vocab;
  const RowSampling rs = sampling[row];
  const SamplingParams& sp = rs.params;
  if (math::GreedySampling(sp.temperature, sp.top_k)) {
    // Argmax; ties to the lowest id; NaNs are passed over (as cpu::Argmax
    // does, which returns 0 only when logit 0 is NaN). Per thread, then
    // across the block.
    float best = -INFINITY;
    int64_t best_id = vocab;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
      const float x = l[j];
      if (!isnan(x) && (best_id == vocab || x > best)) {
        best = x;
        best_id = j;
      }
    }
    __shared__ float values[kThreads];
    __shared__ int64_t ids[kThreads];
    values[threadIdx.x] = best;
    ids[threadIdx.x] = best_id;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
      if (threadIdx.x < stride) {
        const float v = values[threadIdx.x + stride];
        const int64_t id = ids[threadIdx.x + stride];
        if (id < vocab && (ids[threadIdx.x] == vocab || v > values[threadIdx.x] ||
                           (v == values[threadIdx.x] && id < ids[threadIdx.x]))) {
          values[threadIdx.x] = v;
          ids[threadIdx.x] = id;
        }
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      tokens[row] = isnan(l[0]) || ids[0] == vocab ? 0 : static_cast<int32_t>(ids[0]);
    }
    return;
  }
  __shared__ SelectShared sh;
  __shared__ float scratch[32];
  float top = -INFINITY;
  bool mine = false;
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    if (!isnan(l[j])) {
      top = mine ? fmaxf(top, l[j]) : l[j];
      mine = true;
    }
  }
  const bool any = __syncthreads_or(mine);
  top = BlockMax(top, scratch);
  if (!any) {
    if (threadIdx.x == 0) tokens[row] = 0;
    return;
  }
  uint32_t* order = orders + work[row] * vocab;
  uint64_t* weight = weights + work[row] * vocab;
  const int bits = math::WeightBits(vocab);
  const double inv_t = 1.0 / static_cast<double>(sp.temperature);
  for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    order[j] = math::SampleOrder(l[j]);
    weight[j] = math::CandidateWeight(l[j], top, inv_t, bits);
  }
  __syncthreads();
  Row c{{order, nullptr, vocab, ~uint64_t{0}}};
  if (sp.top_k > 0 && sp.top_k < vocab) c.limit = SelectKey(c, sp.top_k, sh);
  c.weight = weight;
  uint64_t total;
  if (sp.top_p < 1.0f) {
    uint64_t in = 0;
    for (int64_t j = threadIdx.x; j < vocab; j += blockDim.x) in += c.In(j) ? weight[j] : 0;
    BlockScan(in, sh.scan, &total);
    c.limit = SelectKey(c, math::TopPTarget(sp.top_p, total), sh);
  }
  // The draw: the kept weights in id order, each thread a run of ids.
  const uint64_t least = math::MinPWeight(sp.min_p, bits);
  const auto kept = [&](int64_t i) { return weight[i] >= least && c.In(i); };
  uint64_t run_weight = 0;
  for (int64_t i = c.RunBegin(); i < c.RunEnd(); ++i) run_weight += kept(i) ? weight[i] : 0;
  const uint64_t before = BlockScan(run_weight, sh.scan, &total);
  const uint64_t r = math::DrawPoint(rs.uniform, total);
  if (before <= r && r < before + run_weight) {
    uint64_t at = r - before;
    for (int64_t i = c.RunBegin(); i < c.RunEnd(); ++i) {
      if (!kept(i)) continue;
      if (at < weight[i]) {
        tokens[row] = static_cast<int32_t>(i);
        break;
      }
      at -= weight[i];
    }
  }
}

__global__ void PenaltyKernel(float* logits, int64_t vocab, const LogitPenalty* penalties,
                              int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const LogitPenalty p = penalties[i];
  float* x = logits + p.row * vocab + p.token;
  *x = math::PenalisedLogit(*x, p.repetition, p.count, p.presence, p.frequency);
}

// n elements of a host array copied into device scratch, in stream order.
template <class T>
T* Upload(cudaStream_t stream, const T* host, int64_t n, void* scratch) {
  auto* device = static_cast<T*>(scratch);
  FWP_CUDA_CHECK("upload to scratch",
                 cudaMemcpyAsync(device, host, n * sizeof(T), cudaMemcpyHostToDevice, stream));
  return device;
}

}  // namespace

void ApplyPenalties(cudaStream_t stream, float* logits, int64_t vocab,
                    const LogitPenalty* penalties, int64_t n, void* scratch) {
  const LogitPenalty* device = Upload(stream, penalties, n, scratch);
  constexpr int kBlock = 256;
  auto* kernel = PenaltyKernel;
  kernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(
      logits, vocab, device, n);
  FWP_CUDA_LAUNCHED("penalties");
}

namespace {

__global__ void SetPenaltyCountsKernel(int32_t* table, int64_t vocab, const PenaltyCount* entries,
                                       int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const PenaltyCount e = entries[i];
  table[e.table_row * vocab + e.token] = e.value;
}

// Block (x, y): batch row y's tokens x·256 + k·(256·gridDim.x).
__global__ void PenaltyRowsKernel(float* logits, int64_t vocab, const int32_t* table,
                                  const PenaltyRow* rows) {
  const PenaltyRow r = rows[blockIdx.y];
  float* x = logits + r.row * vocab;
  const int32_t* counts = table + r.table_row * vocab;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < vocab;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t c = counts[t];
    if (c > 0) x[t] = math::PenalisedLogit(x[t], r.repetition, c - 1, r.presence, r.frequency);
  }
}

}  // namespace

void SetPenaltyCounts(cudaStream_t stream, int32_t* table, int64_t vocab,
                      const PenaltyCount* entries, int64_t n, void* scratch) {
  const PenaltyCount* device = Upload(stream, entries, n, scratch);
  constexpr int kBlock = 256;
  auto* kernel = SetPenaltyCountsKernel;
  kernel<<<static_cast<unsigned>((n + kBlock - 1) / kBlock), kBlock, 0, stream>>>(table, vocab,
                                                                                device, n);
  FWP_CUDA_LAUNCHED("penalty counts");
}

void ApplyPenaltyRows(cudaStream_t stream, float* logits, int64_t vocab, const int32_t* table,
                      const PenaltyRow* rows, int64_t n, void* scratch) {
  const PenaltyRow* device = Upload(stream, rows, n, scratch);
  constexpr int kBlock = 256;
  const auto blocks_x =
      static_cast<unsigned>(std::min<int64_t>((vocab + kBlock - 1) / kBlock, 32));
  auto* kernel = PenaltyRowsKernel;
  constexpr int64_t kMaxGridY = 65535;
  for (int64_t first = 0; first < n; first += kMaxGridY) {
    const auto rows_now = static_cast<unsigned>(std::min(kMaxGridY, n - first));
    kernel<<<dim3(blocks_x, rows_now), kBlock, 0, stream>>>(logits, vocab, table, device + first);
    FWP_CUDA_LAUNCHED("penalty rows");
  }
}

int64_t SampleScratchBytes(int64_t rows, int64_t sampled_rows, int64_t vocab) {
  return sampled_rows * vocab * (sizeof(uint64_t) + sizeof(uint32_t)) +
         rows * (sizeof(RowSampling) + 2 * sizeof(int32_t)) + 64;
}

void SampleRows(cudaStream_t stream, const float* logits, int64_t rows, int64_t vocab,
                const RowSampling* sampling, const int32_t* work, int64_t sampled_rows,
                int32_t* tokens, void* scratch) {
  if (rows == 0) return;
  // Scratch: weights and orders [sampled_rows, vocab], then the rows'
  // parameters, their places and their tokens.
  auto* weights = static_cast<uint64_t*>(scratch);
  auto* orders = reinterpret_cast<uint32_t*>(weights + sampled_rows * vocab);
  auto* params = reinterpret_cast<RowSampling*>(
      (reinterpret_cast<uintptr_t>(orders + sampled_rows * vocab) + 15) & ~uintptr_t{15});
  auto* places = reinterpret_cast<int32_t*>(params + rows);
  auto* out = places + rows;
  FWP_CUDA_CHECK("sampler parameters",
                 cudaMemcpyAsync(params, sampling, rows * sizeof(RowSampling),
                                 cudaMemcpyHostToDevice, stream));
  FWP_CUDA_CHECK("sampler rows", cudaMemcpyAsync(places, work, rows * sizeof(int32_t),
                                                 cudaMemcpyHostToDevice, stream));
  SampleKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
      logits, vocab, params, places, orders, weights, out);
  FWP_CUDA_LAUNCHED("sample rows");
  FWP_CUDA_CHECK("sampled tokens", cudaMemcpyAsync(tokens, out, rows * sizeof(int32_t),
                                                   cudaMemcpyDeviceToHost, stream));
  FWP_CUDA_CHECK("sampler sync", cudaStreamSynchronize(stream));
}

}  // namespace fwp::cuda
