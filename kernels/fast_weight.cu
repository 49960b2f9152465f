// The fast-weight memory on the GPU (see fast_weight.h for the math).
//
// One block per (sequence or slot, head) runs the recurrence token by token
// with the head's state S [d_φ, d_value] (and z) in shared memory: loaded once,
// advanced through every token, written back once. Thread t owns column
// j = t mod P and rows r ≡ t / P (mod G), P = d_value rounded up to a power
// of two (threads with j ≥ d_value hold no column), G = threads / P, so
// the per-token reductions over r (what the memory holds for φk and φq) are
// partial sums per thread combined across the G row groups. The same kernel
// is the fused decode step (one token per slot).
//
// The backward keeps S and dS in shared memory. A first pass stores S at
// every chunk start (checkpoints in global scratch, memory linear in T);
// then, chunk by chunk from the end, it recomputes the chunk forward (saving
// each token's update u and v − v̄, 2·d_value floats) and walks it backwards,
// stepping S back with S_{t−1} = S_t − φk uᵀ: the reversal never runs past one
// chunk, so rounding cannot accumulate over the sequence.
//
// A correct first kernel; a chunkwise-parallel (tensor-core) version can
// replace it behind the same launchers.
#include "kernels/cuda_ops.h"
#include "kernels/feature_map.cuh"

namespace fwp::cuda {
namespace {

constexpr int kThreads = 256;

// dk: key width (feature-map input); dh: value width (columns of S);
// cols: dh rounded up to a power of two (the thread layout's columns).
struct Shape {
  FastWeightSpec spec;
  int dk, dh, cols, dp, heads, head_width, row_width, groups;
  bool delta, norm;
  float scale;
};

int RoundUpPow2(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

Shape MakeShape(const FastWeightSpec& spec) {
  Shape s;
  s.spec = spec;
  s.dk = static_cast<int>(spec.d_head);
  s.dh = static_cast<int>(spec.DValue());
  s.cols = RoundUpPow2(s.dh);
  s.dp = static_cast<int>(spec.DPhi());
  s.heads = static_cast<int>(spec.heads);
  s.head_width = static_cast<int>(spec.HeadWidth());
  s.row_width = static_cast<int>(spec.RowWidth());
  s.groups = kThreads / s.cols;
  s.delta = spec.update == UpdateRule::kDelta;
  s.norm = spec.HasNormalizer();
  s.scale = spec.Scale();
  return s;
}

// Shared-memory carve-up common to both kernels.
struct Common {
  float* S;        // [dp, dh]
  float* z;        // [dp]
  float* phq;      // [dp]
  float* phk;      // [dp]
  float* row;      // [head_width]
  float* part;     // [2, groups, dh]
  float* u;        // [dh]
  float* vmv;      // [dh] v − v̄
  float* out;      // [dh] S₀ᵀφq (forward) / n (backward)
  float* scratch;  // [32]
  float* next;     // first free float
};

__device__ Common CarveCommon(const Shape& s, float* base) {
  Common c;
  c.S = base;
  c.z = c.S + s.dp * s.dh;
  c.phq = c.z + s.dp;
  c.phk = c.phq + s.dp;
  c.row = c.phk + s.dp;
  c.part = c.row + s.head_width;
  c.u = c.part + 2 * s.groups * s.dh;
  c.vmv = c.u + s.dh;
  c.out = c.vmv + s.dh;
  c.scratch = c.out + s.dh;
  c.next = c.scratch + 32;
  return c;
}

inline int64_t CommonFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.dh + 3 * s.dp + s.head_width + 2 * s.groups * s.dh +
         3 * s.dh + 32;
}

__device__ void LoadRow(const Shape& s, const float* src, float* row) {
  for (int i = threadIdx.x; i < s.head_width; i += blockDim.x) row[i] = src[i];
  __syncthreads();
}

// Σ_r S[r, j]·a_r and Σ_r S[r, j]·b_r for each column j, landing in
// out_a[j], out_b[j] (written by group-0 threads; visible after a barrier).
__device__ void ColumnDots(const Shape& s, const float* S, const float* a, const float* b,
                           float* part, float* out_a, float* out_b) {
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  float pa = 0.0f, pb = 0.0f;
  if (j < s.dh) {
    for (int r = g; r < s.dp; r += s.groups) {
      const float v = S[r * s.dh + j];
      pa += v * a[r];
      if (b) pb += v * b[r];
    }
    part[g * s.dh + j] = pa;
    part[(s.groups + g) * s.dh + j] = pb;
  }
  __syncthreads();
  if (g == 0 && j < s.dh) {
    float sa = 0.0f, sb = 0.0f;
    for (int gg = 0; gg < s.groups; ++gg) {
      sa += part[gg * s.dh + j];
      sb += part[(s.groups + gg) * s.dh + j];
    }
    out_a[j] = sa;
    if (out_b) out_b[j] = sb;
  }
  __syncthreads();
}

// Σ_j S[r, j]·w_j for each row r into out[r]: one thread per row; the
// starting column is rotated by r so a warp's reads fall in distinct banks.
__device__ void RowDots(const Shape& s, const float* S, const float* w, float* out,
                        bool accumulate) {
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
    const float* Sr = S + r * s.dh;
    float acc = 0.0f;
    for (int jj = 0; jj < s.dh; ++jj) {
      const int j = (jj + r) % s.dh;
      acc += Sr[j] * w[j];
    }
    out[r] = accumulate ? out[r] + acc : acc;
  }
}

// One token forward from S_{t−1} (in c.S): φq, φk, u, v − v̄; applies the
// update to S (and z). With y != null also writes the read-out.
__device__ void ForwardToken(const Shape& s, const float* omega, const float* src, Common& c,
                             float* y) {
  LoadRow(s, src, c.row);
  PhiBlock(s.spec.phi, c.row, s.dk, omega, c.phq, c.scratch, s.spec.phi.sum_norm);
  PhiBlock(s.spec.phi, c.row + s.dk, s.dk, omega, c.phk, c.scratch, s.spec.phi.sum_norm);
  // vbar → vmv (temporarily), S₀ᵀφq → out.
  ColumnDots(s, c.S, c.phk, y ? c.phq : nullptr, c.part, c.vmv, y ? c.out : nullptr);
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  const bool col = j < s.dh;
  if (g == 0 && col) {
    const float v = c.row[2 * s.dk + j];
    if (s.delta) {
      const float beta = math::Sigmoid(c.row[2 * s.dk + s.dh]);
      const float vmv = v - c.vmv[j];
      c.vmv[j] = vmv;
      c.u[j] = beta * vmv;
    } else {
      c.vmv[j] = v;
      c.u[j] = v;
    }
  }
  float kq_part = 0.0f;
  if (y) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) kq_part += c.phk[r] * c.phq[r];
  }
  const float kq = BlockSum(kq_part, c.scratch);  // barrier: u visible
  if (col) {
    for (int r = g; r < s.dp; r += s.groups) c.S[r * s.dh + j] += c.phk[r] * c.u[j];
  }
  float factor = s.scale;
  if (s.norm) {
    float den_part = 0.0f;
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
      c.z[r] += c.phk[r];
      den_part += c.z[r] * c.phq[r];
    }
    const float den = BlockSum(den_part, c.scratch);
    if (den > 0.0f) factor = s.scale / den;
  }
  if (y && g == 0 && col) y[j] = (c.out[j] + kq * c.u[j]) * factor;
  __syncthreads();
}

__device__ void LoadState(const Shape& s, const float* gS, const float* gz, Common& c) {
  for (int e = threadIdx.x; e < s.dp * s.dh; e += blockDim.x) c.S[e] = gS[e];
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) c.z[r] = gz[r];
  }
  __syncthreads();
}

__device__ void StoreState(const Shape& s, const Common& c, float* gS, float* gz) {
  __syncthreads();
  for (int e = threadIdx.x; e < s.dp * s.dh; e += blockDim.x) gS[e] = c.S[e];
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) gz[r] = c.z[r];
  }
}

struct Args {
  Shape s;
  const float* qkvb;
  const float* omega;
  const int32_t* slots;
  int64_t time;
  StateView state;
};

__global__ void ForwardKernel(Args a, float* y) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  Common c = CarveCommon(s, smem);
  float* slot = a.state.base + static_cast<int64_t>(a.slots[b]) * a.state.slot_floats;
  float* gS = slot + a.state.s_offset + static_cast<int64_t>(h) * s.dp * s.dh;
  float* gz = slot + a.state.z_offset + static_cast<int64_t>(h) * s.dp;
  LoadState(s, gS, gz, c);
  for (int64_t t = 0; t < a.time; ++t) {
    const int64_t token = b * a.time + t;
    ForwardToken(s, a.omega, a.qkvb + token * s.row_width + h * s.head_width, c,
                 y + token * s.heads * s.dh + h * s.dh);
  }
  StoreState(s, c, gS, gz);
}

// Backward. Per (sequence, head) scratch in global memory:
//   checkpoints [chunks, dp·dh + dp], then tokens [chunk, 2·dh] (u, v − v̄).
__global__ void BackwardKernel(Args a, const float* dy, float* dqkvb, StateView dstate,
                               int64_t chunk, float* scratch_all) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  const bool col = j < s.dh;
  Common c = CarveCommon(s, smem);
  float* dS = c.next;              // [dp, dh]
  float* dz = dS + s.dp * s.dh;    // [dp]
  float* dphq = dz + s.dp;         // [dp]
  float* dphk = dphq + s.dp;       // [dp]
  float* dn = dphk + s.dp;         // [dh]
  float* du = dn + s.dh;           // [dh]
  float* dvbar = du + s.dh;        // [dh]
  float* pg = dvbar + s.dh;        // PhiBackwardBlock: g, dg, r
  float* pdg = pg + s.dp;
  float* pr = pdg + s.dp;

  const int64_t chunks = (a.time + chunk - 1) / chunk;
  const int64_t ckpt_floats = static_cast<int64_t>(s.dp) * s.dh + s.dp;
  float* scratch = scratch_all + static_cast<int64_t>(blockIdx.x) *
                                     (chunks * ckpt_floats + chunk * 2 * s.dh);
  float* tokens = scratch + chunks * ckpt_floats;

  const int64_t slot = a.slots[b];
  const float* slot_base = a.state.base + slot * a.state.slot_floats;
  const float* gS0 = slot_base + a.state.s_offset + static_cast<int64_t>(h) * s.dp * s.dh;
  const float* gz0 = slot_base + a.state.z_offset + static_cast<int64_t>(h) * s.dp;
  const float* rows = a.qkvb + b * a.time * s.row_width + h * s.head_width;

  // Pass 1: checkpoints at chunk starts.
  LoadState(s, gS0, gz0, c);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    float* ck = scratch + ch * ckpt_floats;
    for (int e = threadIdx.x; e < s.dp * s.dh; e += blockDim.x) ck[e] = c.S[e];
    if (s.norm) {
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) ck[s.dp * s.dh + r] = c.z[r];
    }
    const int64_t t1 = min(a.time, (ch + 1) * chunk);
    for (int64_t t = ch * chunk; t < t1; ++t) {
      ForwardToken(s, a.omega, rows + t * s.row_width, c, nullptr);
    }
  }

  // ∂L/∂(S_T, z_T) from the caller, or zero.
  float* gdS = dstate.base ? dstate.base + slot * dstate.slot_floats + dstate.s_offset +
                                 static_cast<int64_t>(h) * s.dp * s.dh
                           : nullptr;
  float* gdz = dstate.base ? dstate.base + slot * dstate.slot_floats + dstate.z_offset +
                                 static_cast<int64_t>(h) * s.dp
                           : nullptr;
  for (int e = threadIdx.x; e < s.dp * s.dh; e += blockDim.x) dS[e] = gdS ? gdS[e] : 0.0f;
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) dz[r] = (gdz && s.norm) ? gdz[r] : 0.0f;
  __syncthreads();

  for (int64_t ch = chunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * chunk, t1 = min(a.time, (ch + 1) * chunk);
    // Recompute the chunk from its checkpoint, keeping u and v − v̄.
    const float* ck = scratch + ch * ckpt_floats;
    LoadState(s, ck, ck + s.dp * s.dh, c);
    for (int64_t t = t0; t < t1; ++t) {
      ForwardToken(s, a.omega, rows + t * s.row_width, c, nullptr);
      if (g == 0 && col) {
        tokens[(t - t0) * 2 * s.dh + j] = c.u[j];
        tokens[(t - t0) * 2 * s.dh + s.dh + j] = c.vmv[j];
      }
    }
    __syncthreads();
    // Walk back: c.S holds S_t.
    for (int64_t t = t1 - 1; t >= t0; --t) {
      LoadRow(s, rows + t * s.row_width, c.row);
      PhiBlock(s.spec.phi, c.row, s.dk, a.omega, c.phq, c.scratch, s.spec.phi.sum_norm);
      PhiBlock(s.spec.phi, c.row + s.dk, s.dk, a.omega, c.phk, c.scratch, s.spec.phi.sum_norm);
      if (g == 0 && col) {
        c.u[j] = tokens[(t - t0) * 2 * s.dh + j];
        c.vmv[j] = tokens[(t - t0) * 2 * s.dh + s.dh + j];
      }
      const float* dyt = dy + (b * a.time + t) * s.heads * s.dh + h * s.dh;
      // y = factor · S_tᵀφq.
      float factor = s.scale, dden = 0.0f;
      bool normalised = false;
      if (s.norm) {
        float den_part = 0.0f;
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) den_part += c.z[r] * c.phq[r];
        const float den = BlockSum(den_part, c.scratch);
        if (den > 0.0f) {
          normalised = true;
          factor = s.scale / den;
          ColumnDots(s, c.S, c.phq, nullptr, c.part, c.out, nullptr);  // n = S_tᵀφq
          float dot_part = 0.0f;
          for (int jj = threadIdx.x; jj < s.dh; jj += blockDim.x) {
            dot_part += dyt[jj] * c.out[jj] * factor;
          }
          dden = -BlockSum(dot_part, c.scratch) / den;
        }
      }
      for (int jj = threadIdx.x; jj < s.dh; jj += blockDim.x) dn[jj] = dyt[jj] * factor;
      __syncthreads();
      // dφq = S_t dn (+ z_t dden); dS += φq dnᵀ; dz += φq dden.
      RowDots(s, c.S, dn, dphq, false);
      if (normalised) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
          dphq[r] += c.z[r] * dden;
          dz[r] += c.phq[r] * dden;
        }
      }
      __syncthreads();
      if (col) {
        for (int r = g; r < s.dp; r += s.groups) dS[r * s.dh + j] += c.phq[r] * dn[j];
      }
      __syncthreads();
      // S_t = S_{t−1} + φk uᵀ: du = dSᵀφk, dφk = dS u (+ dz).
      ColumnDots(s, dS, c.phk, nullptr, c.part, du, nullptr);
      RowDots(s, dS, c.u, dphk, false);
      if (s.norm) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) dphk[r] += dz[r];
      }
      __syncthreads();
      float* drow = dqkvb + (b * a.time + t) * s.row_width + h * s.head_width;
      // Step the state back: S_{t−1} = S_t − φk uᵀ, z_{t−1} = z_t − φk.
      if (col) {
        for (int r = g; r < s.dp; r += s.groups) c.S[r * s.dh + j] -= c.phk[r] * c.u[j];
      }
      if (s.norm) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) c.z[r] -= c.phk[r];
      }
      if (s.delta) {
        // u = β (v − v̄), v̄ = S_{t−1}ᵀφk.
        const float beta = math::Sigmoid(c.row[2 * s.dk + s.dh]);
        float db_part = 0.0f;
        for (int jj = threadIdx.x; jj < s.dh; jj += blockDim.x) {
          db_part += du[jj] * c.vmv[jj];
          drow[2 * s.dk + jj] = beta * du[jj];
          dvbar[jj] = -beta * du[jj];
        }
        const float dbeta = BlockSum(db_part, c.scratch);  // barrier: S_{t−1}, dvbar ready
        if (threadIdx.x == 0) drow[2 * s.dk + s.dh] = dbeta * beta * (1.0f - beta);
        RowDots(s, c.S, dvbar, dphk, true);
        if (col) {
          for (int r = g; r < s.dp; r += s.groups) dS[r * s.dh + j] += c.phk[r] * dvbar[j];
        }
      } else {
        for (int jj = threadIdx.x; jj < s.dh; jj += blockDim.x) drow[2 * s.dk + jj] = du[jj];
      }
      __syncthreads();
      PhiBackwardBlock(s.spec.phi, c.row, s.dk, a.omega, dphq, drow, pg, pdg, pr, c.scratch);
      PhiBackwardBlock(s.spec.phi, c.row + s.dk, s.dk, a.omega, dphk, drow + s.dk, pg, pdg, pr,
                       c.scratch);
    }
  }
  __syncthreads();
  if (gdS) {
    for (int e = threadIdx.x; e < s.dp * s.dh; e += blockDim.x) gdS[e] = dS[e];
    if (s.norm) {
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) gdz[r] = dz[r];
    }
  }
}

int64_t BackwardExtraFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.dh + 3 * s.dp + 3 * s.dh +
         PhiBackwardShared(s.spec.phi, s.dk);
}

size_t SharedBytes(int64_t floats) { return static_cast<size_t>(floats) * sizeof(float); }

}  // namespace

bool FastWeightSupported(const FastWeightSpec& spec, const char** why_not) {
  if (spec.DValue() > kThreads) {
    *why_not = "the CUDA fast-weight kernels need d_value (d_head) of at most 256";
    return false;
  }
  if (spec.DPhi() * spec.DValue() > 24576) {
    *why_not = "the CUDA fast-weight kernels keep S and dS in shared memory: d_phi * d_value "
               "must be at most 24576";
    return false;
  }
  // The backward holds S, dS and per-token vectors: check its real need.
  const Shape s = MakeShape(spec);
  int device = 0, limit = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) ==
          cudaSuccess &&
      SharedBytes(CommonFloats(s) + BackwardExtraFloats(s)) > static_cast<size_t>(limit)) {
    *why_not = "the CUDA fast-weight backward needs more shared memory than this GPU offers "
               "per block: reduce d_phi * d_value";
    return false;
  }
  return true;
}

void FastWeightSequence(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                        const float* favor_proj, const int32_t* slots, int64_t batch,
                        int64_t time, const StateView& state, float* y) {
  if (batch == 0 || time == 0) return;
  Args a{MakeShape(spec), qkvb, favor_proj, slots, time, state};
  const size_t shared = SharedBytes(CommonFloats(a.s));
  FWP_CUDA_CHECK("fast-weight smem",
                 cudaFuncSetAttribute(ForwardKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared)));
  ForwardKernel<<<static_cast<unsigned>(batch * spec.heads), kThreads, shared, stream>>>(a, y);
  FWP_CUDA_LAUNCHED("fast-weight sequence");
}

void FastWeightStep(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                    const float* favor_proj, const int32_t* slots, int64_t n,
                    const StateView& state, float* y) {
  FastWeightSequence(stream, spec, qkvb, favor_proj, slots, n, 1, state, y);
}

int64_t FastWeightBackwardScratch(const FastWeightSpec& spec, int64_t batch, int64_t time,
                                  int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  const int64_t chunks = (time + chunk - 1) / chunk;
  const int64_t dp = spec.DPhi(), dv = spec.DValue();
  return batch * spec.heads * (chunks * (dp * dv + dp) + chunk * 2 * dv);
}

void FastWeightSequenceBackward(cudaStream_t stream, const FastWeightSpec& spec,
                                const float* qkvb, const float* favor_proj,
                                const int32_t* slots, int64_t batch, int64_t time,
                                const StateView& state, const float* dy, float* dqkvb,
                                const StateView& dstate, int64_t chunk, float* scratch) {
  if (batch == 0 || time == 0) return;
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  Args a{MakeShape(spec), qkvb, favor_proj, slots, time, state};
  const size_t shared = SharedBytes(CommonFloats(a.s) + BackwardExtraFloats(a.s));
  FWP_CUDA_CHECK("fast-weight backward smem",
                 cudaFuncSetAttribute(BackwardKernel,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(shared)));
  BackwardKernel<<<static_cast<unsigned>(batch * spec.heads), kThreads, shared, stream>>>(
      a, dy, dqkvb, dstate, chunk, scratch);
  FWP_CUDA_LAUNCHED("fast-weight sequence backward");
}

}  // namespace fwp::cuda
