// The fast-weight memory on the GPU (see fast_weight.h for the math).
//
// One block per (sequence or slot, head, column tile) runs the recurrence
// token by token with its part of the head's state S [d_φ, d_value] (and z)
// in shared memory: loaded once, advanced through every token, written back
// once. Thread t owns tile column j = t mod P and rows r ≡ t / P (mod G),
// P = the tile width rounded up to a power of two (threads with j past the
// tile hold no column), G = threads / P, so the per-token reductions over r
// (what the memory holds for φk and φq) are partial sums per thread combined
// across the G row groups. The same kernel is the fused decode step (one token
// per slot).
//
// Column tiles. The delta and sum rules act on each column of S (each value
// dimension) on its own, given φk and β. When the whole state fits in shared
// memory (every language-model config) one tile is all of d_value. When it
// does not (the synthetic retrieval task's one-hot values make d_value = S, up
// to 600), the columns are split into tiles of a power-of-two width, one block
// each (grid y); every block computes φq, φk, z and the normaliser itself.
// Only the normaliser z spans tiles in the forward: the tiles all read z₀ and
// a small kernel advances z after them. In the backward, what sums over
// columns (dφq, dφk, dβ and the normaliser's Σ dy·y) is written per tile and
// token into scratch; a second kernel per (sequence, head) adds the tiles in
// a fixed order, adds the normaliser's terms walking z back, and runs the
// feature-map backward.
//
// The backward keeps S and dS in shared memory. A first pass stores S at
// every chunk start (checkpoints in global scratch, memory linear in T);
// then, chunk by chunk from the end, it recomputes the chunk forward (saving
// each token's update u and v − v̄, 2·tile floats) and walks it backwards,
// stepping S back with S_{t−1} = S_t − φk uᵀ: the reversal never runs past one
// chunk, so rounding cannot accumulate over the sequence.
//
// A correct first kernel; a chunkwise-parallel (tensor-core) version can
// replace it behind the same launchers.
#include <atomic>

#include "kernels/cuda_ops.h"
#include "kernels/feature_map.cuh"

namespace fwp::cuda {
namespace {

constexpr int kThreads = 256;

// dk: key width (feature-map input); dh: value width (columns of S);
// tw: columns per block (a tile); tiles: blocks per (sequence, head);
// cols: tw rounded up to a power of two (the thread layout's columns).
struct Shape {
  FastWeightSpec spec;
  int dk, dh, dp, heads, head_width, row_width;
  int tw, tiles, cols, groups;
  bool delta, norm;
  float scale;
};

int RoundUpPow2(int64_t x) {
  int p = 1;
  while (p < x) p *= 2;
  return p;
}

Shape MakeShape(const FastWeightSpec& spec, int tile) {
  Shape s;
  s.spec = spec;
  s.dk = static_cast<int>(spec.d_head);
  s.dh = static_cast<int>(spec.DValue());
  s.dp = static_cast<int>(spec.DPhi());
  s.heads = static_cast<int>(spec.heads);
  s.head_width = static_cast<int>(spec.HeadWidth());
  s.row_width = static_cast<int>(spec.RowWidth());
  s.tw = tile;
  s.tiles = (s.dh + tile - 1) / tile;
  s.cols = RoundUpPow2(tile);
  s.groups = kThreads / s.cols;
  s.delta = spec.update == UpdateRule::kDelta;
  s.norm = spec.HasNormalizer();
  s.scale = spec.Scale();
  return s;
}

// Per-block shared state common to both kernels.
struct Common {
  int j0, w;       // this block's columns: [j0, j0 + w) of d_value
  float* S;        // [dp, tw] the tile's columns of S
  float* z;        // [dp]
  float* phq;      // [dp]
  float* phk;      // [dp]
  float* row;      // [head_width]
  float* part;     // [2, groups, tw]
  float* u;        // [tw]
  float* vmv;      // [tw] v − v̄
  float* out;      // [tw] S₀ᵀφq (forward) / n (backward)
  float* scratch;  // [32]
  float* next;     // first free float
};

__device__ Common CarveCommon(const Shape& s, float* base) {
  Common c;
  c.j0 = static_cast<int>(blockIdx.y) * s.tw;
  c.w = min(s.tw, s.dh - c.j0);
  c.S = base;
  c.z = c.S + s.dp * s.tw;
  c.phq = c.z + s.dp;
  c.phk = c.phq + s.dp;
  c.row = c.phk + s.dp;
  c.part = c.row + s.head_width;
  c.u = c.part + 2 * s.groups * s.tw;
  c.vmv = c.u + s.tw;
  c.out = c.vmv + s.tw;
  c.scratch = c.out + s.tw;
  c.next = c.scratch + 32;
  return c;
}

inline int64_t CommonFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.tw + 3 * s.dp + s.head_width + 2 * s.groups * s.tw +
         3 * s.tw + 32;
}

__device__ void LoadRow(const Shape& s, const float* src, float* row) {
  for (int i = threadIdx.x; i < s.head_width; i += blockDim.x) row[i] = src[i];
  __syncthreads();
}

// dst[r, j] = src[r, j] for r < rows, j < w, rows ld_dst and ld_src apart.
__device__ void CopyTile(float* dst, int64_t ld_dst, const float* src, int64_t ld_src,
                         int rows, int w) {
  for (int e = threadIdx.x; e < rows * w; e += blockDim.x) {
    const int r = e / w, j = e - r * w;
    dst[r * ld_dst + j] = src[r * ld_src + j];
  }
}

// Σ_r S[r, j]·a_r and Σ_r S[r, j]·b_r for each tile column j, landing in
// out_a[j], out_b[j] (written by group-0 threads; visible after a barrier).
__device__ void ColumnDots(const Shape& s, const Common& c, const float* S, const float* a,
                           const float* b, float* out_a, float* out_b) {
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  float pa = 0.0f, pb = 0.0f;
  if (j < c.w) {
    for (int r = g; r < s.dp; r += s.groups) {
      const float v = S[r * s.tw + j];
      pa += v * a[r];
      if (b) pb += v * b[r];
    }
    c.part[g * s.tw + j] = pa;
    c.part[(s.groups + g) * s.tw + j] = pb;
  }
  __syncthreads();
  if (g == 0 && j < c.w) {
    float sa = 0.0f, sb = 0.0f;
    for (int gg = 0; gg < s.groups; ++gg) {
      sa += c.part[gg * s.tw + j];
      sb += c.part[(s.groups + gg) * s.tw + j];
    }
    out_a[j] = sa;
    if (out_b) out_b[j] = sb;
  }
  __syncthreads();
}

// Σ_j S[r, j]·w_j over the tile's columns for each row r into out[r]: one
// thread per row; the starting column is rotated by r so a warp's reads fall
// in distinct banks.
__device__ void RowDots(const Shape& s, const Common& c, const float* S, const float* w,
                        float* out, bool accumulate) {
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
    const float* Sr = S + r * s.tw;
    const int start = r % c.w;
    float acc = 0.0f;
    for (int jj = 0; jj < c.w; ++jj) {
      int j = start + jj;
      if (j >= c.w) j -= c.w;
      acc += Sr[j] * w[j];
    }
    out[r] = accumulate ? out[r] + acc : acc;
  }
}

// One token forward from S_{t−1} (in c.S): φq, φk, u, v − v̄; applies the
// update to the tile of S (and to z). With y (the head's d_value outputs)
// != null also writes the tile's read-out.
__device__ void ForwardToken(const Shape& s, const float* omega, const float* src, Common& c,
                             float* y) {
  LoadRow(s, src, c.row);
  PhiBlock(s.spec.phi, c.row, s.dk, omega, c.phq, c.scratch, s.spec.phi.sum_norm);
  PhiBlock(s.spec.phi, c.row + s.dk, s.dk, omega, c.phk, c.scratch, s.spec.phi.sum_norm);
  // vbar → vmv (temporarily), S₀ᵀφq → out.
  ColumnDots(s, c, c.S, c.phk, y ? c.phq : nullptr, c.vmv, y ? c.out : nullptr);
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  const bool col = j < c.w;
  if (g == 0 && col) {
    const float v = c.row[2 * s.dk + c.j0 + j];
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
    for (int r = g; r < s.dp; r += s.groups) c.S[r * s.tw + j] += c.phk[r] * c.u[j];
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
  if (y && g == 0 && col) y[c.j0 + j] = (c.out[j] + kq * c.u[j]) * factor;
  __syncthreads();
}

// gS: the head's S [dp, dh]; the block loads its tile's columns.
__device__ void LoadState(const Shape& s, const float* gS, const float* gz, Common& c) {
  CopyTile(c.S, s.tw, gS + c.j0, s.dh, s.dp, c.w);
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) c.z[r] = gz[r];
  }
  __syncthreads();
}

__device__ void StoreState(const Shape& s, const Common& c, float* gS, float* gz, bool store_z) {
  __syncthreads();
  CopyTile(gS + c.j0, s.dh, c.S, s.tw, s.dp, c.w);
  if (s.norm && store_z) {
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

__device__ float* HeadS(const StateView& v, int64_t slot, const Shape& s, int h) {
  return v.base + slot * v.slot_floats + v.s_offset + static_cast<int64_t>(h) * s.dp * s.dh;
}
__device__ float* HeadZ(const StateView& v, int64_t slot, const Shape& s, int h) {
  return v.base + slot * v.slot_floats + v.z_offset + static_cast<int64_t>(h) * s.dp;
}

// grid (batch·heads, tiles).
__global__ void __launch_bounds__(kThreads) ForwardKernel(Args a, float* y) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  Common c = CarveCommon(s, smem);
  float* gS = HeadS(a.state, a.slots[b], s, h);
  float* gz = HeadZ(a.state, a.slots[b], s, h);
  LoadState(s, gS, gz, c);
  for (int64_t t = 0; t < a.time; ++t) {
    const int64_t token = b * a.time + t;
    ForwardToken(s, a.omega, a.qkvb + token * s.row_width + h * s.head_width, c,
                 y + token * s.heads * s.dh + h * s.dh);
  }
  // With several tiles every block read z₀; NormalizerKernel advances z.
  StoreState(s, c, gS, gz, s.tiles == 1);
}

// z ← z + Σ_t φk_t over `tokens` rows of a head, in token order (the same
// sums a single-tile block makes). Thread r owns z[r].
__device__ void AddKeys(const Args& a, const float* rows, int64_t tokens, float* row, float* phk,
                        float* z, float* scratch) {
  const Shape& s = a.s;
  for (int64_t t = 0; t < tokens; ++t) {
    LoadRow(s, rows + t * s.row_width, row);
    PhiBlock(s.spec.phi, row + s.dk, s.dk, a.omega, phk, scratch, s.spec.phi.sum_norm);
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) z[r] += phk[r];
  }
}

// z ← z + Σ_t φk_t for each (sequence, head) after the tiles' forward.
// grid: batch·heads.
__global__ void __launch_bounds__(kThreads) NormalizerKernel(Args a) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  float* row = smem;
  float* phk = row + s.head_width;
  float* z = phk + s.dp;
  float* scratch = z + s.dp;
  float* gz = HeadZ(a.state, a.slots[b], s, h);
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) z[r] = gz[r];
  AddKeys(a, a.qkvb + b * a.time * s.row_width + h * s.head_width, a.time, row, phk, z,
          scratch);
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) gz[r] = z[r];
}

inline int64_t NormalizerFloats(const Shape& s) { return s.head_width + 2 * s.dp + 32; }

// Backward scratch, per block (sequence, head, tile):
//   checkpoints [chunks, dp·tw + dp], then tokens [chunk, 2·tw] (u, v − v̄);
// after every block's part, with several tiles, the per-tile sums
//   partials [batch·heads, tiles, time, PartialFloats(dp)]: dφq | dφk | dβ | Σ dy·y.
__host__ __device__ inline int64_t PartialFloats(int dp) {
  return 2 * static_cast<int64_t>(dp) + 2;
}

__host__ __device__ inline int64_t BlockScratchFloats(const Shape& s, int64_t time,
                                                      int64_t chunk) {
  const int64_t chunks = (time + chunk - 1) / chunk;
  return chunks * (static_cast<int64_t>(s.dp) * s.tw + s.dp) + chunk * 2 * s.tw;
}

// grid (batch·heads, tiles).
__global__ void __launch_bounds__(kThreads)
    BackwardKernel(Args a, const float* dy, float* dqkvb, StateView dstate, int64_t chunk,
                   float* scratch_all) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  const int j = threadIdx.x % s.cols, g = threadIdx.x / s.cols;
  const bool split = s.tiles > 1;
  Common c = CarveCommon(s, smem);
  const bool col = j < c.w;
  float* dS = c.next;              // [dp, tw]
  float* dz = dS + s.dp * s.tw;    // [dp]
  float* dphq = dz + s.dp;         // [dp]
  float* dphk = dphq + s.dp;       // [dp]
  float* dn = dphk + s.dp;         // [tw]
  float* du = dn + s.tw;           // [tw]
  float* dvbar = du + s.tw;        // [tw]
  float* pg = dvbar + s.tw;        // PhiBackwardBlock: g, dg, r
  float* pdg = pg + s.dp;
  float* pr = pdg + s.dp;

  const int64_t chunks = (a.time + chunk - 1) / chunk;
  const int64_t ckpt_floats = static_cast<int64_t>(s.dp) * s.tw + s.dp;
  const int64_t block = static_cast<int64_t>(blockIdx.x) * s.tiles + blockIdx.y;
  const int64_t block_floats = BlockScratchFloats(s, a.time, chunk);
  float* scratch = scratch_all + block * block_floats;
  float* tokens = scratch + chunks * ckpt_floats;
  float* partials = scratch_all + static_cast<int64_t>(gridDim.x) * s.tiles * block_floats +
                    block * a.time * PartialFloats(s.dp);

  const int64_t slot = a.slots[b];
  const float* gS0 = HeadS(a.state, slot, s, h);
  const float* gz0 = HeadZ(a.state, slot, s, h);
  const float* rows = a.qkvb + b * a.time * s.row_width + h * s.head_width;

  // Pass 1: checkpoints at chunk starts.
  LoadState(s, gS0, gz0, c);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    float* ck = scratch + ch * ckpt_floats;
    CopyTile(ck, s.tw, c.S, s.tw, s.dp, c.w);
    if (s.norm) {
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) ck[s.dp * s.tw + r] = c.z[r];
    }
    const int64_t t1 = min(a.time, (ch + 1) * chunk);
    for (int64_t t = ch * chunk; t < t1; ++t) {
      ForwardToken(s, a.omega, rows + t * s.row_width, c, nullptr);
    }
  }

  // ∂L/∂(S_T, z_T) from the caller, or zero. With several tiles z's
  // gradient is the reduction kernel's.
  float* gdS = dstate.base ? HeadS(dstate, slot, s, h) : nullptr;
  float* gdz = dstate.base && !split ? HeadZ(dstate, slot, s, h) : nullptr;
  if (gdS) {
    CopyTile(dS, s.tw, gdS + c.j0, s.dh, s.dp, c.w);
  } else {
    for (int e = threadIdx.x; e < s.dp * s.tw; e += blockDim.x) dS[e] = 0.0f;
  }
  for (int r = threadIdx.x; r < s.dp; r += blockDim.x) dz[r] = (gdz && s.norm) ? gdz[r] : 0.0f;
  __syncthreads();

  for (int64_t ch = chunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * chunk, t1 = min(a.time, (ch + 1) * chunk);
    // Recompute the chunk from its checkpoint, keeping u and v − v̄.
    const float* ck = scratch + ch * ckpt_floats;
    __syncthreads();
    CopyTile(c.S, s.tw, ck, s.tw, s.dp, c.w);
    if (s.norm) {
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) c.z[r] = ck[s.dp * s.tw + r];
    }
    __syncthreads();
    for (int64_t t = t0; t < t1; ++t) {
      ForwardToken(s, a.omega, rows + t * s.row_width, c, nullptr);
      if (g == 0 && col) {
        tokens[(t - t0) * 2 * s.tw + j] = c.u[j];
        tokens[(t - t0) * 2 * s.tw + s.tw + j] = c.vmv[j];
      }
    }
    __syncthreads();
    // Walk back: c.S holds S_t.
    for (int64_t t = t1 - 1; t >= t0; --t) {
      LoadRow(s, rows + t * s.row_width, c.row);
      PhiBlock(s.spec.phi, c.row, s.dk, a.omega, c.phq, c.scratch, s.spec.phi.sum_norm);
      PhiBlock(s.spec.phi, c.row + s.dk, s.dk, a.omega, c.phk, c.scratch, s.spec.phi.sum_norm);
      if (g == 0 && col) {
        c.u[j] = tokens[(t - t0) * 2 * s.tw + j];
        c.vmv[j] = tokens[(t - t0) * 2 * s.tw + s.tw + j];
      }
      const float* dyt = dy + (b * a.time + t) * s.heads * s.dh + h * s.dh + c.j0;
      // y = factor · S_tᵀφq.
      float factor = s.scale, dden = 0.0f, ydot = 0.0f;
      bool normalised = false;
      if (s.norm) {
        float den_part = 0.0f;
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) den_part += c.z[r] * c.phq[r];
        const float den = BlockSum(den_part, c.scratch);
        if (den > 0.0f) {
          normalised = true;
          factor = s.scale / den;
          ColumnDots(s, c, c.S, c.phq, nullptr, c.out, nullptr);  // n = S_tᵀφq
          float dot_part = 0.0f;
          for (int jj = threadIdx.x; jj < c.w; jj += blockDim.x) {
            dot_part += dyt[jj] * c.out[jj] * factor;
          }
          ydot = BlockSum(dot_part, c.scratch);  // Σ dy·y over the tile
          dden = -ydot / den;
        }
      }
      for (int jj = threadIdx.x; jj < c.w; jj += blockDim.x) dn[jj] = dyt[jj] * factor;
      __syncthreads();
      // dφq = S_t dn (+ z_t dden); dS += φq dnᵀ; dz += φq dden.
      RowDots(s, c, c.S, dn, dphq, false);
      if (normalised && !split) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
          dphq[r] += c.z[r] * dden;
          dz[r] += c.phq[r] * dden;
        }
      }
      __syncthreads();
      if (col) {
        for (int r = g; r < s.dp; r += s.groups) dS[r * s.tw + j] += c.phq[r] * dn[j];
      }
      __syncthreads();
      // S_t = S_{t−1} + φk uᵀ: du = dSᵀφk, dφk = dS u (+ dz).
      ColumnDots(s, c, dS, c.phk, nullptr, du, nullptr);
      RowDots(s, c, dS, c.u, dphk, false);
      if (s.norm && !split) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) dphk[r] += dz[r];
      }
      __syncthreads();
      float* drow = dqkvb + (b * a.time + t) * s.row_width + h * s.head_width;
      // Step the state back: S_{t−1} = S_t − φk uᵀ, z_{t−1} = z_t − φk.
      if (col) {
        for (int r = g; r < s.dp; r += s.groups) c.S[r * s.tw + j] -= c.phk[r] * c.u[j];
      }
      if (s.norm) {
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) c.z[r] -= c.phk[r];
      }
      float dbeta = 0.0f;
      if (s.delta) {
        // u = β (v − v̄), v̄ = S_{t−1}ᵀφk.
        const float beta = math::Sigmoid(c.row[2 * s.dk + s.dh]);
        float db_part = 0.0f;
        for (int jj = threadIdx.x; jj < c.w; jj += blockDim.x) {
          db_part += du[jj] * c.vmv[jj];
          drow[2 * s.dk + c.j0 + jj] = beta * du[jj];
          dvbar[jj] = -beta * du[jj];
        }
        dbeta = BlockSum(db_part, c.scratch);  // barrier: S_{t−1}, dvbar ready
        if (!split && threadIdx.x == 0) drow[2 * s.dk + s.dh] = dbeta * beta * (1.0f - beta);
        RowDots(s, c, c.S, dvbar, dphk, true);
        if (col) {
          for (int r = g; r < s.dp; r += s.groups) dS[r * s.tw + j] += c.phk[r] * dvbar[j];
        }
      } else {
        for (int jj = threadIdx.x; jj < c.w; jj += blockDim.x) drow[2 * s.dk + c.j0 + jj] = du[jj];
      }
      __syncthreads();
      if (!split) {
        PhiBackwardBlock(s.spec.phi, c.row, s.dk, a.omega, dphq, drow, pg, pdg, pr, c.scratch);
        PhiBackwardBlock(s.spec.phi, c.row + s.dk, s.dk, a.omega, dphk, drow + s.dk, pg, pdg, pr,
                         c.scratch);
      } else {
        float* p = partials + t * PartialFloats(s.dp);
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
          p[r] = dphq[r];
          p[s.dp + r] = dphk[r];
        }
        if (threadIdx.x == 0) {
          p[2 * s.dp] = dbeta;
          p[2 * s.dp + 1] = ydot;
        }
        __syncthreads();
      }
    }
  }
  __syncthreads();
  if (gdS) {
    CopyTile(gdS + c.j0, s.dh, dS, s.tw, s.dp, c.w);
    if (gdz && s.norm) {
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) gdz[r] = dz[r];
    }
  }
}

// With several tiles: per (sequence, head), adds the tiles' sums in tile
// order, adds the normaliser's terms (z rebuilt per chunk from tile 0's
// checkpoints and stepped back inside it, as the tiles do) and runs the
// feature-map backward into the q and k parts of dqkvb, and β's. grid:
// batch·heads.
__global__ void __launch_bounds__(kThreads)
    ReduceKernel(Args a, float* dqkvb, StateView dstate, const float* scratch_all, int64_t chunk) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  float* row = smem;
  float* phq = row + s.head_width;
  float* phk = phq + s.dp;
  float* z = phk + s.dp;
  float* dz = z + s.dp;
  float* dphq = dz + s.dp;
  float* dphk = dphq + s.dp;
  float* scratch = dphk + s.dp;
  float* pg = scratch + 32;
  float* pdg = pg + s.dp;
  float* pr = pdg + s.dp;
  const int64_t slot = a.slots[b];
  const float* rows = a.qkvb + b * a.time * s.row_width + h * s.head_width;
  const int64_t pf = PartialFloats(s.dp);
  const int64_t block_floats = BlockScratchFloats(s, a.time, chunk);
  const float* partials = scratch_all + static_cast<int64_t>(gridDim.x) * s.tiles * block_floats +
                          static_cast<int64_t>(blockIdx.x) * s.tiles * a.time * pf;
  const int64_t tile_floats = a.time * pf;
  // Tile 0's checkpoints of z at chunk starts (BackwardKernel's pass 1).
  const int64_t ckpt_floats = static_cast<int64_t>(s.dp) * s.tw + s.dp;
  const float* ckpt_z = scratch_all + static_cast<int64_t>(blockIdx.x) * s.tiles * block_floats +
                        static_cast<int64_t>(s.dp) * s.tw;

  float* gdz = dstate.base && s.norm ? HeadZ(dstate, slot, s, h) : nullptr;
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) dz[r] = gdz ? gdz[r] : 0.0f;
  }
  const int64_t chunks = (a.time + chunk - 1) / chunk;
  for (int64_t ch = chunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * chunk, t1 = min(a.time, (ch + 1) * chunk);
    if (s.norm) {
      // z at the chunk's end from its start, as the tiles recompute it: z is
      // stepped back only inside one chunk, never over the whole sequence.
      __syncthreads();
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) z[r] = ckpt_z[ch * ckpt_floats + r];
      AddKeys(a, rows + t0 * s.row_width, t1 - t0, row, phk, z, scratch);
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      __syncthreads();
      LoadRow(s, rows + t * s.row_width, row);
      if (s.norm) {  // φq, φk for the normaliser (the feature-map backward recomputes its own)
        PhiBlock(s.spec.phi, row, s.dk, a.omega, phq, scratch, s.spec.phi.sum_norm);
        PhiBlock(s.spec.phi, row + s.dk, s.dk, a.omega, phk, scratch, s.spec.phi.sum_norm);
      }
      const float* pt = partials + t * pf;
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
        float aq = 0.0f, ak = 0.0f;
        for (int k = 0; k < s.tiles; ++k) {
          aq += pt[k * tile_floats + r];
          ak += pt[k * tile_floats + s.dp + r];
        }
        dphq[r] = aq;
        dphk[r] = ak;
      }
      float dbeta = 0.0f, ydot = 0.0f;
      for (int k = 0; k < s.tiles; ++k) {
        dbeta += pt[k * tile_floats + 2 * s.dp];
        ydot += pt[k * tile_floats + 2 * s.dp + 1];
      }
      if (s.norm) {
        float den_part = 0.0f;
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) den_part += z[r] * phq[r];
        const float den = BlockSum(den_part, scratch);
        const float dden = den > 0.0f ? -ydot / den : 0.0f;
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
          if (den > 0.0f) {
            dphq[r] += z[r] * dden;
            dz[r] += phq[r] * dden;
          }
          dphk[r] += dz[r];
          z[r] -= phk[r];
        }
      }
      float* drow = dqkvb + (b * a.time + t) * s.row_width + h * s.head_width;
      if (s.delta && threadIdx.x == 0) {
        const float beta = math::Sigmoid(row[2 * s.dk + s.dh]);
        drow[2 * s.dk + s.dh] = dbeta * beta * (1.0f - beta);
      }
      __syncthreads();
      PhiBackwardBlock(s.spec.phi, row, s.dk, a.omega, dphq, drow, pg, pdg, pr, scratch);
      PhiBackwardBlock(s.spec.phi, row + s.dk, s.dk, a.omega, dphk, drow + s.dk, pg, pdg, pr,
                       scratch);
    }
  }
  __syncthreads();
  if (gdz) {
    for (int r = threadIdx.x; r < s.dp; r += blockDim.x) gdz[r] = dz[r];
  }
}

int64_t BackwardExtraFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.tw + 3 * s.dp + 3 * s.tw +
         PhiBackwardShared(s.spec.phi, s.dk);
}

int64_t ReduceFloats(const Shape& s) {
  return s.head_width + 6 * s.dp + 32 + PhiBackwardShared(s.spec.phi, s.dk);
}

size_t SharedBytes(int64_t floats) { return static_cast<size_t>(floats) * sizeof(float); }

// Shared memory a block may opt into on the current device, in floats
// (asked once per device: the decode step picks its shape every call).
int64_t SharedLimitFloats() {
  constexpr int kDevices = 64;
  static std::atomic<int> cached[kDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 48 * 1024 / sizeof(float);
  int limit = device < kDevices ? cached[device].load(std::memory_order_relaxed) : 0;
  if (limit == 0) {
    if (cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
        cudaSuccess) {
      limit = 48 * 1024;
    }
    if (device < kDevices) cached[device].store(limit, std::memory_order_relaxed);
  }
  return limit / static_cast<int64_t>(sizeof(float));
}

// The forward's or the backward's block shape: all of d_value in one block
// when it fits in shared memory (d_value ≤ 256), else the widest
// power-of-two column tile that does. tiles == 0 when not even one column
// fits.
Shape PickShape(const FastWeightSpec& spec, bool backward) {
  const int64_t limit = SharedLimitFloats();
  auto fits = [&](const Shape& s) {
    const int64_t floats = backward ? CommonFloats(s) + BackwardExtraFloats(s) : CommonFloats(s);
    return floats <= limit && (s.tiles == 1 || !backward || ReduceFloats(s) <= limit) &&
           (s.tiles == 1 || backward || !s.norm || NormalizerFloats(s) <= limit);
  };
  const int dh = static_cast<int>(spec.DValue());
  if (dh <= kThreads) {
    const Shape whole = MakeShape(spec, dh);
    if (fits(whole)) return whole;
  }
  for (int tw = kThreads; tw >= 1; tw /= 2) {
    if (tw >= dh) continue;
    const Shape s = MakeShape(spec, tw);
    if (fits(s)) return s;
  }
  Shape none = MakeShape(spec, 1);
  none.tiles = 0;
  return none;
}

dim3 Grid(const Shape& s, int64_t batch) {
  return dim3(static_cast<unsigned>(batch * s.heads), static_cast<unsigned>(s.tiles));
}

template <typename Kernel>
void AllowShared(Kernel kernel, size_t bytes, const char* what) {
  FWP_CUDA_CHECK(what, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(bytes)));
}

}  // namespace

bool FastWeightSupported(const FastWeightSpec& spec, const char** why_not) {
  if (PickShape(spec, false).tiles == 0 || PickShape(spec, true).tiles == 0) {
    *why_not = "the CUDA fast-weight kernels keep d_phi rows of S and dS and one projection "
               "row (2 d_head + d_value + 1 floats) in shared memory, and even one value column "
               "needs more than this GPU offers per block: reduce d_phi or d_value";
    return false;
  }
  return true;
}

void FastWeightSequence(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                        const float* favor_proj, const int32_t* slots, int64_t batch,
                        int64_t time, const StateView& state, float* y) {
  if (batch == 0 || time == 0) return;
  Args a{PickShape(spec, false), qkvb, favor_proj, slots, time, state};
  if (a.s.tiles == 0)
    Die("fast weights", "shape not supported (CheckAttention refuses it)", __FILE__, __LINE__);
  const size_t shared = SharedBytes(CommonFloats(a.s));
  AllowShared(ForwardKernel, shared, "fast-weight smem");
  ForwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, y);
  FWP_CUDA_LAUNCHED("fast-weight sequence");
  if (a.s.tiles > 1 && a.s.norm) {
    const size_t zshared = SharedBytes(NormalizerFloats(a.s));
    AllowShared(NormalizerKernel, zshared, "fast-weight normaliser smem");
    NormalizerKernel<<<static_cast<unsigned>(batch * a.s.heads), kThreads, zshared, stream>>>(a);
    FWP_CUDA_LAUNCHED("fast-weight normaliser");
  }
}

void FastWeightStep(cudaStream_t stream, const FastWeightSpec& spec, const float* qkvb,
                    const float* favor_proj, const int32_t* slots, int64_t n,
                    const StateView& state, float* y) {
  FastWeightSequence(stream, spec, qkvb, favor_proj, slots, n, 1, state, y);
}

int64_t FastWeightBackwardScratch(const FastWeightSpec& spec, int64_t batch, int64_t time,
                                  int64_t chunk) {
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  const Shape s = PickShape(spec, true);
  const int64_t blocks = batch * s.heads * s.tiles;
  return blocks * BlockScratchFloats(s, time, chunk) +
         (s.tiles > 1 ? blocks * time * PartialFloats(s.dp) : 0);
}

void FastWeightSequenceBackward(cudaStream_t stream, const FastWeightSpec& spec,
                                const float* qkvb, const float* favor_proj,
                                const int32_t* slots, int64_t batch, int64_t time,
                                const StateView& state, const float* dy, float* dqkvb,
                                const StateView& dstate, int64_t chunk, float* scratch) {
  if (batch == 0 || time == 0) return;
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  Args a{PickShape(spec, true), qkvb, favor_proj, slots, time, state};
  if (a.s.tiles == 0)
    Die("fast weights", "shape not supported (CheckAttention refuses it)", __FILE__, __LINE__);
  const size_t shared = SharedBytes(CommonFloats(a.s) + BackwardExtraFloats(a.s));
  AllowShared(BackwardKernel, shared, "fast-weight backward smem");
  BackwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, dy, dqkvb, dstate, chunk,
                                                                 scratch);
  FWP_CUDA_LAUNCHED("fast-weight sequence backward");
  if (a.s.tiles > 1) {
    const size_t rshared = SharedBytes(ReduceFloats(a.s));
    AllowShared(ReduceKernel, rshared, "fast-weight backward reduction smem");
    ReduceKernel<<<static_cast<unsigned>(batch * a.s.heads), kThreads, rshared, stream>>>(
        a, dqkvb, dstate, scratch, chunk);
    FWP_CUDA_LAUNCHED("fast-weight backward reduction");
  }
}

}  // namespace fwp::cuda
