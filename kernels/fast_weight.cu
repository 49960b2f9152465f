// The fast-weight memory on the GPU (see fast_weight.h for the math), in two
// forms behind the same launchers:
//   - the chunkwise form ("The chunkwise form" below) for sequences, forward
//     and backward: chunks of 16–64 tokens as matrix products in shared
//     memory, a few barriers per chunk;
//   - the recurrence, token by token: the decode step and chunk < 16.
//
// The recurrence. One block per (sequence or slot, head, column tile) runs it
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
// token into scratch; TileSumKernel adds the tiles in a fixed order and
// NormalizerBackwardKernel adds the normaliser's terms, for both forms
// (FinishBackward below). The feature-map backward then runs as its own op.
//
// The backward keeps S and dS in shared memory. A first pass stores S at
// every chunk start (checkpoints in global scratch, memory linear in T);
// then, chunk by chunk from the end, it recomputes the chunk forward (saving
// each token's update u and v − v̄, 2·tile floats) and walks it backwards,
// stepping S back with S_{t−1} = S_t − φk uᵀ: the reversal never runs past one
// chunk, so rounding cannot accumulate over the sequence.
#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <utility>

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

struct Identity {
  __device__ float operator()(int, float v) const { return v; }
};

template <typename F>
__device__ float ApplyRow(F f, int r, float v) {
  return f(r, v);
}
template <typename F>
__device__ float4 ApplyRow(F f, int r, float4 v) {
  return float4{f(r, v.x), f(r, v.y), f(r, v.z), f(r, v.w)};
}

// CopyTile's loop over V = float or float4 (w, ld_dst and ld_src in floats,
// multiples of V's width). No __restrict__: the loads come first by the code's
// own order, and some sources (the backward's checkpoints) were written earlier
// in the same launch, which non-coherent loads may not read.
template <typename V, typename F>
__device__ void CopyTileOf(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int rows,
                           int w, F f) {
  constexpr int kWidth = sizeof(V) / sizeof(float), kBatch = kWidth == 4 ? 4 : 8;
  const int wv = w / kWidth, n = rows * wv;
  for (int e0 = threadIdx.x; e0 < n; e0 += kBatch * blockDim.x) {
    V v[kBatch];
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + k * static_cast<int>(blockDim.x);
      if (e < n) {
        const int r = e / wv, j = (e - r * wv) * kWidth;
        v[k] = *reinterpret_cast<const V*>(src + r * ld_src + j);
      }
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k) {
      const int e = e0 + k * static_cast<int>(blockDim.x);
      if (e < n) {
        const int r = e / wv, j = (e - r * wv) * kWidth;
        *reinterpret_cast<V*>(dst + r * ld_dst + j) = ApplyRow(f, r, v[k]);
      }
    }
  }
}

// dst[r, j] = f(r, src[r, j]) (f: the value itself by default) for r < rows,
// j < w, rows ld_dst and ld_src apart. Each thread issues up to 8 loads (4 of
// 4-float vectors where both sides allow) before its first store: a loop of
// load-then-store has one load in flight per thread, and the state copies of
// the decode step are its whole memory traffic.
template <typename F = Identity>
__device__ void CopyTile(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int rows,
                         int w, F f = {}) {
  const bool vectors = w % 4 == 0 && ld_dst % 4 == 0 && ld_src % 4 == 0 &&
                       (reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % 16 == 0;
  if (vectors) {
    CopyTileOf<float4>(dst, ld_dst, src, ld_src, rows, w, f);
  } else {
    CopyTileOf<float>(dst, ld_dst, src, ld_src, rows, w, f);
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
__global__ void __launch_bounds__(kThreads, 4) ForwardKernel(Args a, float* y) {
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

// ---- The chunkwise form ----------------------------------------------------
//
// C tokens at a time (fast_weight.h's chunkwise form), so that a chunk costs a
// handful of barriers instead of several per token and its work is matrix
// products over shared memory. Per chunk of n ≤ C tokens, with S₀ the tile of
// S at the chunk start (and z₀):
//   A  load the n projection rows;
//   B  Φq, Φk [n, d_φ] (one warp per token), U ← V's tile columns, β;
//   C  O = Φq S₀;  delta: U ← diag(β)(V − Φk S₀);  G = tril(Φq Φkᵀ);
//      delta: K = strictly-tril(Φk Φkᵀ), L = diag(β) K;
//   D  delta: solve (I + L) U = U in blocks of 16 rows; normaliser: each token's
//      denominator z₀·φq_i + Σ_{k≤i} G_ik;
//   E  y = scale · (O + G U) (/ denominator);  S ← S₀ + Φkᵀ U;  z ← z₀ + Σ φk.
// The backward (ChunkBackwardKernel) stores S at every chunk start, then from
// the last chunk to the first restores S₀, redoes A–D and takes the chunk's
// products back (see there).
//
// Every row stride in shared memory is odd, so that a warp reading a column
// touches distinct banks.

constexpr int kSolveBlock = 16;

__host__ __device__ inline int Odd(int x) { return x | 1; }

struct ChunkLayout {
  int chunk;
  int lds;  // rows of S and dS [d_φ, tw]
  int ldp;  // rows of Φq, Φk, dΦq, dΦk [C, d_φ]
  int ldg;  // rows of G, K, L, D [C, C]
  int ldu;  // rows of U, O, V − P, dU [C, tw]
  int64_t x_floats;  // the projection rows, later G, K and L
};

__host__ __device__ inline ChunkLayout MakeChunkLayout(const Shape& s, int chunk) {
  ChunkLayout l;
  l.chunk = chunk;
  l.lds = Odd(s.tw);
  l.ldp = Odd(s.dp);
  l.ldg = Odd(chunk);
  l.ldu = Odd(s.tw);
  const int64_t rows = static_cast<int64_t>(chunk) * s.head_width;
  const int64_t g = 3 * static_cast<int64_t>(chunk) * l.ldg;
  l.x_floats = rows > g ? rows : g;
  return l;
}

inline int64_t ChunkFloats(const Shape& s, int chunk) {
  const ChunkLayout l = MakeChunkLayout(s, chunk);
  return static_cast<int64_t>(s.dp) * l.lds + s.dp + 2 * static_cast<int64_t>(chunk) * l.ldp +
         l.x_floats + 2 * static_cast<int64_t>(chunk) * l.ldu + 3 * chunk;
}

inline int64_t ChunkBackwardFloats(const Shape& s, int chunk) {
  const ChunkLayout l = MakeChunkLayout(s, chunk);
  return ChunkFloats(s, chunk) + static_cast<int64_t>(s.dp) * l.lds +
         2 * static_cast<int64_t>(chunk) * l.ldp + 2 * static_cast<int64_t>(chunk) * l.ldu +
         static_cast<int64_t>(chunk) * l.ldg + s.dp;
}

struct ChunkSmem {
  float *S, *z, *phq, *phk, *G, *K, *L, *x, *U, *O, *beta, *factor, *inv_den;
  float *dS, *dphq, *dphk, *vmp, *dU, *D, *dz;  // the backward's
};

__device__ ChunkSmem CarveChunk(const Shape& s, const ChunkLayout& l, float* base) {
  ChunkSmem m;
  const int C = l.chunk;
  m.S = base;
  m.z = m.S + s.dp * l.lds;
  m.phq = m.z + s.dp;
  m.phk = m.phq + C * l.ldp;
  m.x = m.phk + C * l.ldp;
  m.G = m.x;
  m.K = m.G + C * l.ldg;
  m.L = m.K + C * l.ldg;
  m.U = m.x + l.x_floats;
  m.O = m.U + C * l.ldu;
  m.beta = m.O + C * l.ldu;
  m.factor = m.beta + C;
  m.inv_den = m.factor + C;
  m.dS = m.inv_den + C;
  m.dphq = m.dS + s.dp * l.lds;
  m.dphk = m.dphq + C * l.ldp;
  m.vmp = m.dphk + C * l.ldp;
  m.dU = m.vmp + C * l.ldu;
  m.D = m.dU + C * l.ldu;
  m.dz = m.D + C * l.ldg;
  return m;
}

// out(i, j, Σ_k A(i,k)·B(k,j)) for i < m, j < n, where A(i,k) = a[i·ai + k·ak]
// and B(k,j) = b[k·bk + j·bj] (shared memory). 16 × 16 threads, each with a
// 4 × 4 register tile (rows ≡ ty, columns ≡ tx mod 16) per 64 × 64 block of
// the output; the same (m, n) always gives an output to the same thread.
// Every output sums k in order, whatever m and n are. Ends without a barrier.
template <typename Out>
__device__ void BlockGemm(int m, int n, int k, const float* a, int ai, int ak, const float* b,
                          int bk, int bj, Out out) {
  static_assert(kThreads == 256, "a 16 × 16 thread grid");
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  for (int i0 = 0; i0 < m; i0 += 64) {
    for (int j0 = 0; j0 < n; j0 += 64) {
      const float* ar[4];
      const float* bc[4];
      for (int x = 0; x < 4; ++x) {
        ar[x] = a + min(i0 + ty + 16 * x, m - 1) * ai;  // clamped: read, never written
        bc[x] = b + min(j0 + tx + 16 * x, n - 1) * bj;
      }
      float acc[4][4] = {};
      for (int kk = 0; kk < k; ++kk) {
        float av[4], bv[4];
        for (int x = 0; x < 4; ++x) {
          av[x] = ar[x][kk * ak];
          bv[x] = bc[x][kk * bk];
        }
        for (int x = 0; x < 4; ++x) {
          for (int y = 0; y < 4; ++y) acc[x][y] += av[x] * bv[y];
        }
      }
      for (int x = 0; x < 4; ++x) {
        for (int y = 0; y < 4; ++y) {
          const int i = i0 + ty + 16 * x, j = j0 + tx + 16 * y;
          if (i < m && j < n) out(i, j, acc[x][y]);
        }
      }
    }
  }
}

// The backward of M = A Bᵀ (A, B [n, d], rows ld apart) given D = ∂L/∂M
// [n, n]: dA += D B and dB += Dᵀ A (dA and dB may be the same rows: both
// products give each output to the same thread). Ends without a barrier.
__device__ void GramBackward(int n, int d, const float* D, int ldg, const float* A,
                             const float* B, int ld, float* dA, float* dB) {
  BlockGemm(n, d, n, D, ldg, 1, B, ld, 1, [&](int i, int r, float acc) { dA[i * ld + r] += acc; });
  BlockGemm(n, d, n, D, 1, ldg, A, ld, 1, [&](int i, int r, float acc) { dB[i * ld + r] += acc; });
}

// One warp per token: f(t, i) for t = warp, warp + warps, … below n rounded up
// to a multiple of the warp count, with i = min(t, n − 1) the token to read.
// Every warp makes the same number of calls (rounds past n reread token n − 1
// and must write only when t < n, or to a row of their own), so warp-wide
// steps inside f stay uniform across the block.
template <typename F>
__device__ void ForTokensByWarp(int n, F f) {
  const int warp = threadIdx.x / 32, warps = kThreads / 32;
  const int rounds = (n + warps - 1) / warps * warps;
  for (int t = warp; t < rounds; t += warps) f(t, min(t, n - 1));
}

// Phases A–D for tokens [t0, t0 + n) of one (sequence, head, tile): m.S holds
// S₀ (and m.z z₀). Leaves Φq, Φk, β, U, O, G, K, L (and the normaliser's
// factors) in shared memory; with vmp, also V − Φk S₀ (delta). Ends with a
// barrier.
__device__ void ChunkPrepare(const Args& a, const ChunkLayout& l, const ChunkSmem& m,
                             const float* rows, int j0, int w, int64_t t0, int n, bool vmp) {
  const Shape& s = a.s;
  const int dp = s.dp, ldp = l.ldp, ldg = l.ldg, ldu = l.ldu, lds = l.lds;
  const int lane = threadIdx.x % 32;
  // A
  CopyTile(m.x, s.head_width, rows + t0 * s.row_width, s.row_width, n, s.head_width);
  __syncthreads();
  // B (rows of Φ past n are computed and never read)
  ForTokensByWarp(n, [&](int t, int i) {
    const float* row = m.x + i * s.head_width;
    PhiWarp(s.spec.phi, row, s.dk, a.omega, m.phq + t * ldp);
    PhiWarp(s.spec.phi, row + s.dk, s.dk, a.omega, m.phk + t * ldp);
  });
  for (int e = threadIdx.x; e < n * w; e += kThreads) {
    const int t = e / w, j = e - t * w;
    m.U[t * ldu + j] = m.x[t * s.head_width + 2 * s.dk + j0 + j];
  }
  if (s.delta) {
    for (int t = threadIdx.x; t < n; t += kThreads) {
      m.beta[t] = math::Sigmoid(m.x[t * s.head_width + 2 * s.dk + s.dh]);
    }
  }
  __syncthreads();
  // C (the projection rows in m.x are done with: G, K and L overwrite them)
  BlockGemm(n, w, dp, m.phq, ldp, 1, m.S, lds, 1,
            [&](int i, int j, float acc) { m.O[i * ldu + j] = acc; });
  if (s.delta) {
    BlockGemm(n, w, dp, m.phk, ldp, 1, m.S, lds, 1, [&](int i, int j, float acc) {
      const float r = m.U[i * ldu + j] - acc;
      if (vmp) m.vmp[i * ldu + j] = r;
      m.U[i * ldu + j] = m.beta[i] * r;
    });
    BlockGemm(n, n, dp, m.phk, ldp, 1, m.phk, 1, ldp, [&](int i, int j, float acc) {
      m.K[i * ldg + j] = j < i ? acc : 0.0f;
      m.L[i * ldg + j] = j < i ? m.beta[i] * acc : 0.0f;
    });
  }
  BlockGemm(n, n, dp, m.phq, ldp, 1, m.phk, 1, ldp,
            [&](int i, int j, float acc) { m.G[i * ldg + j] = j <= i ? acc : 0.0f; });
  __syncthreads();
  // D
  if (s.delta) {
    for (int r0 = 0; r0 < n; r0 += kSolveBlock) {
      const int r1 = min(r0 + kSolveBlock, n);
      for (int j = threadIdx.x; j < w; j += kThreads) {
        for (int i = r0 + 1; i < r1; ++i) {
          float acc = m.U[i * ldu + j];
          for (int k = r0; k < i; ++k) acc -= m.L[i * ldg + k] * m.U[k * ldu + j];
          m.U[i * ldu + j] = acc;
        }
      }
      __syncthreads();
      if (r1 < n) {
        BlockGemm(n - r1, w, r1 - r0, m.L + r1 * ldg + r0, ldg, 1, m.U + r0 * ldu, ldu, 1,
                  [&](int i, int j, float acc) { m.U[(r1 + i) * ldu + j] -= acc; });
        __syncthreads();
      }
    }
  }
  if (s.norm) {
    ForTokensByWarp(n, [&](int t, int i) {
      float part = 0.0f;
      for (int r = lane; r < dp; r += 32) part += m.z[r] * m.phq[i * ldp + r];
      for (int k = lane; k <= i; k += 32) part += m.G[i * ldg + k];
      const float den = WarpSum(part);
      if (lane == 0 && t < n) {
        m.factor[t] = den > 0.0f ? s.scale / den : s.scale;
        m.inv_den[t] = den > 0.0f ? 1.0f / den : 0.0f;
      }
    });
    __syncthreads();
  }
}

// Phase E: y (when dst, the chunk's first output of this tile) and S, z
// advanced to the chunk's end. Ends with a barrier.
__device__ void ChunkAdvance(const Args& a, const ChunkLayout& l, const ChunkSmem& m, int w,
                             int n, float* dst) {
  const Shape& s = a.s;
  const int ldu = l.ldu;
  if (dst) {
    BlockGemm(n, w, n, m.G, l.ldg, 1, m.U, ldu, 1, [&](int i, int j, float acc) {
      dst[static_cast<int64_t>(i) * s.heads * s.dh + j] =
          (m.O[i * ldu + j] + acc) * (s.norm ? m.factor[i] : s.scale);
    });
  }
  BlockGemm(s.dp, w, n, m.phk, 1, l.ldp, m.U, ldu, 1,
            [&](int r, int j, float acc) { m.S[r * l.lds + j] += acc; });
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += kThreads) {
      float acc = m.z[r];
      for (int t = 0; t < n; ++t) acc += m.phk[t * l.ldp + r];
      m.z[r] = acc;
    }
  }
  __syncthreads();
}

// grid (batch·heads, tiles).
__global__ void __launch_bounds__(kThreads) ChunkForwardKernel(Args a, int chunk, float* y) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const ChunkLayout l = MakeChunkLayout(s, chunk);
  const ChunkSmem m = CarveChunk(s, l, smem);
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  const int j0 = static_cast<int>(blockIdx.y) * s.tw, w = min(s.tw, s.dh - j0);
  float* gS = HeadS(a.state, a.slots[b], s, h);
  float* gz = HeadZ(a.state, a.slots[b], s, h);
  CopyTile(m.S, l.lds, gS + j0, s.dh, s.dp, w);
  if (s.norm) {
    for (int r = threadIdx.x; r < s.dp; r += kThreads) m.z[r] = gz[r];
  }
  const float* rows = a.qkvb + b * a.time * s.row_width + h * s.head_width;
  float* out = y + b * a.time * s.heads * s.dh + h * s.dh + j0;
  for (int64_t t0 = 0; t0 < a.time; t0 += chunk) {
    const int n = static_cast<int>(min(static_cast<int64_t>(chunk), a.time - t0));
    ChunkPrepare(a, l, m, rows, j0, w, t0, n, false);
    ChunkAdvance(a, l, m, w, n, out + t0 * s.heads * s.dh);
  }
  CopyTile(gS + j0, s.dh, m.S, l.lds, s.dp, w);
  if (s.norm && s.tiles == 1) {
    for (int r = threadIdx.x; r < s.dp; r += kThreads) gz[r] = m.z[r];
  }
}

// A block's tile of S (and z, with the normaliser) at a chunk start.
__host__ __device__ inline int64_t ChunkCheckpointFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.tw + (s.norm ? s.dp : 0);
}

// Scratch of the backward (both forms; the recurrent one adds its tokens after
// these, RecurrentTokensAt), in floats:
//   checkpoints  [batch·heads·tiles, chunks, ChunkCheckpointFloats]
//   dΦq, dΦk     [tiles, rows, d_φ] each, rows (b·T + t)·heads + h: each
//                tile's part; the tiles' sum lands in tile 0's, which the
//                feature-map backward op turns into the q and k parts of dqkvb
//   row parts    [tiles, rows] with several tiles: dβ's (delta rule) or the
//                normaliser's Σ_j dY_ij num_ij (sum rule) over the tile's columns
// and with the normaliser and several tiles, from tile 0 for its terms
// (NormalizerBackwardKernel):
//   Φq, Φk       [rows, d_φ] each
//   1 / den      [rows], then dd = ∂L/∂den (TileSumKernel)
struct BackwardScratch {
  int64_t ckpt_floats, ckpts, phi, row_parts, phi_values, inv_den, total;
  // Where each part starts, in floats from the scratch's start.
  __host__ __device__ int64_t DphiQAt() const { return ckpts; }
  __host__ __device__ int64_t DphiKAt() const { return ckpts + phi; }
  __host__ __device__ int64_t RowPartsAt() const { return ckpts + 2 * phi; }
  __host__ __device__ int64_t PhiQAt() const { return RowPartsAt() + row_parts; }
  __host__ __device__ int64_t PhiKAt() const { return PhiQAt() + phi_values / 2; }
  __host__ __device__ int64_t InvDenAt() const { return PhiQAt() + phi_values; }
};

__host__ __device__ inline BackwardScratch MakeBackwardScratch(const Shape& s, int chunk,
                                                         int64_t batch, int64_t time) {
  BackwardScratch c;
  const int64_t chunks = (time + chunk - 1) / chunk, rows = batch * time * s.heads;
  c.ckpt_floats = ChunkCheckpointFloats(s);
  c.ckpts = batch * s.heads * s.tiles * chunks * c.ckpt_floats;
  c.phi = s.tiles * rows * s.dp;
  const bool split = s.tiles > 1 && (s.delta || s.norm);
  c.row_parts = split ? s.tiles * rows : 0;
  c.phi_values = split && s.norm ? 2 * rows * s.dp : 0;
  c.inv_den = split && s.norm ? rows : 0;
  c.total = c.ckpts + 2 * c.phi + c.row_parts + c.phi_values + c.inv_den;
  return c;
}

// The chunkwise backward, one block per (sequence, head, column tile). For a
// chunk, with dY = scale·dy and dS = ∂L/∂S at the chunk's end (Y = O + G U,
// S₁ = S₀ + Φkᵀ U):
//   dU = Gᵀ dY + Φk dS;  dG = tril(dY Uᵀ);  dΦq = dY S₀ᵀ + dG Φk;
//   dΦk = U dSᵀ + dGᵀ Φq;  dS ← dS + Φqᵀ dY;
// and for the delta rule, (I + L) U = R = diag(β)(V − Φk S₀) with L = diag(β) K:
//   dR = (I + L)⁻ᵀ dU (back substitution in blocks of 16 rows, in place);
//   dL = −strictly-tril(dR Uᵀ);  dβ_i = Σ_j dR_ij (V − P)_ij + Σ_k dL_ik K_ik;
//   dK = diag(β) dL, dΦk += (dK + dKᵀ) Φk;  dV = diag(β) dR;  dP = −diag(β) dR,
//   dΦk += dP S₀ᵀ, dS ← dS + Φkᵀ dP.
// The sum rule's dV is dU. With its normaliser, y_i = f_i·num_i, f_i = scale /
// den_i, den_i = z₀·φq_i + Σ_{k≤i} G_ik: dY = f·dy, and dd_i = ∂L/∂den_i =
// −Σ_j dY_ij num_ij / den_i adds dd_i to row i of dG (k ≤ i), dd_i z₀ to dφq_i
// and Σ_i dd_i φq_i to dz; z₁ = z₀ + Σ φk adds dz₁ to every dφk.
// Everything but dd acts on each value column on its own or sums over the
// columns linearly (dΦq, dΦk, dβ): column tiles each write their part of those
// sums, and TileSumKernel adds the parts. dd needs every column's
// Σ_j dY_ij num_ij first, so with tiles the normaliser's terms wait for
// NormalizerBackwardKernel: the tiles write their part of that sum and
// tile 0 Φq, Φk and 1/den, and the tiles' own dd and dz stay zero.
__global__ void __launch_bounds__(kThreads, 1)  // registers for one block per SM, as its shared memory allows
    ChunkBackwardKernel(Args a, int chunk, const float* dy, float* dqkvb, StateView dstate,
                        float* scratch_all) {
  extern __shared__ float smem[];
  const Shape& s = a.s;
  const ChunkLayout l = MakeChunkLayout(s, chunk);
  const ChunkSmem m = CarveChunk(s, l, smem);
  const int j0 = static_cast<int>(blockIdx.y) * s.tw, w = min(s.tw, s.dh - j0);
  const int dp = s.dp, ldp = l.ldp, ldg = l.ldg, ldu = l.ldu, lds = l.lds;
  const int lane = threadIdx.x % 32;
  const int h = blockIdx.x % s.heads;
  const int64_t b = blockIdx.x / s.heads;
  const int64_t chunks = (a.time + chunk - 1) / chunk;
  const int64_t batch = gridDim.x / s.heads, rows_all = batch * a.time * s.heads;
  const BackwardScratch sc = MakeBackwardScratch(s, chunk, batch, a.time);
  const int64_t ckpt_floats = sc.ckpt_floats;
  float* ckpts = scratch_all +
                 (static_cast<int64_t>(blockIdx.x) * s.tiles + blockIdx.y) * chunks * ckpt_floats;
  float* dphi_q = scratch_all + sc.DphiQAt() + blockIdx.y * rows_all * dp;
  float* dphi_k = scratch_all + sc.DphiKAt() + blockIdx.y * rows_all * dp;
  // dβ's or Σ dY·num's part, and tile 0's Φ and 1/den (several tiles).
  float* row_part = scratch_all + sc.RowPartsAt() + blockIdx.y * rows_all;
  float* phi_q = scratch_all + sc.PhiQAt();
  float* phi_k = scratch_all + sc.PhiKAt();
  float* inv_den = scratch_all + sc.InvDenAt();
  const bool own_norm = s.norm && s.tiles == 1;  // dd and dz here, else after the tiles
  const bool norm_values = s.norm && s.tiles > 1 && blockIdx.y == 0;
  const int64_t slot = a.slots[b];
  const float* rows = a.qkvb + b * a.time * s.row_width + h * s.head_width;

  // Pass 1: S (and z) at every chunk start.
  CopyTile(m.S, lds, HeadS(a.state, slot, s, h) + j0, s.dh, dp, w);
  if (s.norm) {
    const float* gz0 = HeadZ(a.state, slot, s, h);
    for (int r = threadIdx.x; r < dp; r += kThreads) m.z[r] = gz0[r];
  }
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const int64_t t0 = ch * chunk;
    const int n = static_cast<int>(min(static_cast<int64_t>(chunk), a.time - t0));
    __syncthreads();
    CopyTile(ckpts + ch * ckpt_floats, s.tw, m.S, lds, dp, w);
    if (s.norm) {
      for (int r = threadIdx.x; r < dp; r += kThreads) ckpts[ch * ckpt_floats + dp * s.tw + r] = m.z[r];
    }
    if (ch + 1 < chunks) {
      ChunkPrepare(a, l, m, rows, j0, w, t0, n, false);
      ChunkAdvance(a, l, m, w, n, nullptr);
    }
  }
  float* gdS = dstate.base ? HeadS(dstate, slot, s, h) : nullptr;
  if (gdS) {
    CopyTile(m.dS, lds, gdS + j0, s.dh, dp, w);
  } else {
    for (int e = threadIdx.x; e < dp * w; e += kThreads) m.dS[(e / w) * lds + e % w] = 0.0f;
  }
  float* gdz = dstate.base && own_norm ? HeadZ(dstate, slot, s, h) : nullptr;
  if (own_norm) {
    for (int r = threadIdx.x; r < dp; r += kThreads) m.dz[r] = gdz ? gdz[r] : 0.0f;
  }

  for (int64_t ch = chunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * chunk;
    const int n = static_cast<int>(min(static_cast<int64_t>(chunk), a.time - t0));
    __syncthreads();
    CopyTile(m.S, lds, ckpts + ch * ckpt_floats, s.tw, dp, w);
    if (s.norm) {
      for (int r = threadIdx.x; r < dp; r += kThreads) m.z[r] = ckpts[ch * ckpt_floats + dp * s.tw + r];
    }
    ChunkPrepare(a, l, m, rows, j0, w, t0, n, true);  // barriers before reading S and z
    float* dY = m.O;  // O is only needed for the normaliser's num, first
    float* dd = m.beta;  // the sum rule has no β
    if (s.norm) {
      BlockGemm(n, w, n, m.G, ldg, 1, m.U, ldu, 1, [&](int i, int j, float acc) {
        m.vmp[i * ldu + j] = m.O[i * ldu + j] + acc;  // num
      });
      __syncthreads();
    }
    CopyTile(dY, ldu, dy + ((b * a.time + t0) * s.heads + h) * s.dh + j0, s.heads * s.dh, n, w,
             [&](int i, float v) { return (s.norm ? m.factor[i] : s.scale) * v; });
    __syncthreads();
    if (s.norm) {
      ForTokensByWarp(n, [&](int t, int i) {
        float part = 0.0f;
        for (int j = lane; j < w; j += 32) part += dY[i * ldu + j] * m.vmp[i * ldu + j];
        const float dot = WarpSum(part);
        if (lane == 0 && t < n) {
          if (own_norm) {
            dd[t] = -dot * m.inv_den[t];
          } else {
            const int64_t row = (b * a.time + t0 + i) * s.heads + h;
            row_part[row] = dot;
            if (norm_values) inv_den[row] = m.inv_den[i];
          }
        }
      });
      __syncthreads();
    }
    BlockGemm(n, w, n, m.G, 1, ldg, dY, ldu, 1,
              [&](int i, int j, float acc) { m.dU[i * ldu + j] = acc; });
    BlockGemm(n, w, dp, m.phk, ldp, 1, m.dS, lds, 1,
              [&](int i, int j, float acc) { m.dU[i * ldu + j] += acc; });
    BlockGemm(n, n, w, dY, ldu, 1, m.U, 1, ldu, [&](int i, int k, float acc) {
      m.D[i * ldg + k] = k <= i ? (own_norm ? acc + dd[i] : acc) : 0.0f;
    });
    BlockGemm(n, dp, w, dY, ldu, 1, m.S, 1, lds, [&](int i, int r, float acc) {
      m.dphq[i * ldp + r] = own_norm ? acc + dd[i] * m.z[r] : acc;
    });
    BlockGemm(n, dp, w, m.U, ldu, 1, m.dS, 1, lds, [&](int i, int r, float acc) {
      m.dphk[i * ldp + r] = own_norm ? acc + m.dz[r] : acc;
    });
    __syncthreads();
    GramBackward(n, dp, m.D, ldg, m.phq, m.phk, ldp, m.dphq, m.dphk);  // G = Φq Φkᵀ
    BlockGemm(dp, w, n, m.phq, 1, ldp, dY, ldu, 1,
              [&](int r, int j, float acc) { m.dS[r * lds + j] += acc; });
    if (own_norm) {
      for (int r = threadIdx.x; r < dp; r += kThreads) {
        float acc = m.dz[r];
        for (int i = 0; i < n; ++i) acc += dd[i] * m.phq[i * ldp + r];
        m.dz[r] = acc;
      }
    }
    __syncthreads();
    float* drows = dqkvb + (b * a.time + t0) * s.row_width + h * s.head_width;
    if (s.delta) {
      for (int r1 = n; r1 > 0;) {  // the forward's blocks of rows, last first
        const int r0 = (r1 - 1) / kSolveBlock * kSolveBlock;
        for (int j = threadIdx.x; j < w; j += kThreads) {
          for (int i = r1 - 2; i >= r0; --i) {
            float acc = m.dU[i * ldu + j];
            for (int k = i + 1; k < r1; ++k) acc -= m.L[k * ldg + i] * m.dU[k * ldu + j];
            m.dU[i * ldu + j] = acc;
          }
        }
        __syncthreads();
        if (r0 > 0) {
          BlockGemm(r0, w, r1 - r0, m.L + r0 * ldg, 1, ldg, m.dU + r0 * ldu, ldu, 1,
                    [&](int i, int j, float acc) { m.dU[i * ldu + j] -= acc; });
          __syncthreads();
        }
        r1 = r0;
      }
      // m.dU holds dR. dP → dY's buffer, dV → dqkvb, dL → D.
      for (int e = threadIdx.x; e < n * w; e += kThreads) {
        const int i = e / w, j = e - i * w;
        const float dr = m.dU[i * ldu + j];
        dY[i * ldu + j] = -m.beta[i] * dr;
        drows[i * s.row_width + 2 * s.dk + j0 + j] = m.beta[i] * dr;
      }
      BlockGemm(n, n, w, m.dU, ldu, 1, m.U, 1, ldu,
                [&](int i, int k, float acc) { m.D[i * ldg + k] = k < i ? -acc : 0.0f; });
      __syncthreads();
      ForTokensByWarp(n, [&](int t, int i) {
        float part = 0.0f;
        for (int j = lane; j < w; j += 32) part += m.dU[i * ldu + j] * m.vmp[i * ldu + j];
        for (int k = lane; k < i; k += 32) part += m.D[i * ldg + k] * m.K[i * ldg + k];
        const float dbeta = WarpSum(part);
        if (lane == 0 && t < n) {
          const float beta = m.beta[i];
          if (s.tiles == 1) {
            drows[i * s.row_width + 2 * s.dk + s.dh] = dbeta * beta * (1.0f - beta);
          } else {
            row_part[(b * a.time + t0 + i) * s.heads + h] = dbeta;
          }
        }
      });
      __syncthreads();
      for (int e = threadIdx.x; e < n * n; e += kThreads) {
        const int i = e / n, k = e - i * n;
        m.D[i * ldg + k] *= m.beta[i];
      }
      __syncthreads();
      BlockGemm(n, dp, w, dY, ldu, 1, m.S, 1, lds,
                [&](int i, int r, float acc) { m.dphk[i * ldp + r] += acc; });
      GramBackward(n, dp, m.D, ldg, m.phk, m.phk, ldp, m.dphk, m.dphk);  // K = Φk Φkᵀ
      BlockGemm(dp, w, n, m.phk, 1, ldp, dY, ldu, 1,
                [&](int r, int j, float acc) { m.dS[r * lds + j] += acc; });
      __syncthreads();
    } else {
      for (int e = threadIdx.x; e < n * w; e += kThreads) {
        const int i = e / w, j = e - i * w;
        drows[i * s.row_width + 2 * s.dk + j0 + j] = m.dU[i * ldu + j];
      }
    }
    for (int e = threadIdx.x; e < n * dp; e += kThreads) {
      const int i = e / dp, r = e - i * dp;
      const int64_t row = (b * a.time + t0 + i) * s.heads + h;
      dphi_q[row * dp + r] = m.dphq[i * ldp + r];
      dphi_k[row * dp + r] = m.dphk[i * ldp + r];
      if (norm_values) {
        phi_q[row * dp + r] = m.phq[i * ldp + r];
        phi_k[row * dp + r] = m.phk[i * ldp + r];
      }
    }
  }
  __syncthreads();
  if (gdS) CopyTile(gdS + j0, s.dh, m.dS, lds, dp, w);
  if (gdz) {
    for (int r = threadIdx.x; r < dp; r += kThreads) gdz[r] = m.dz[r];
  }
}

// With several column tiles: dΦq, dΦk and dβ of each row summed over the
// tiles in tile order (into tile 0's part), and β's gradient into dqkvb; with
// the normaliser, each row's dd = −(1/den)·Σ_tiles Σ_j dY·num (tiles in
// order) in place of its 1/den. grid-stride over the rows' elements.
__global__ void __launch_bounds__(kThreads)
    TileSumKernel(Args a, int chunk, int64_t batch, float* dqkvb, float* scratch_all) {
  const Shape& s = a.s;
  const BackwardScratch sc = MakeBackwardScratch(s, chunk, batch, a.time);
  const int64_t rows = batch * a.time * s.heads, phi_floats = rows * s.dp;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
       e < 2 * phi_floats; e += stride) {  // dΦq's elements, then dΦk's
    float* part = scratch_all +
                  (e < phi_floats ? sc.DphiQAt() + e : sc.DphiKAt() + (e - phi_floats));
    float acc = part[0];
    for (int k = 1; k < s.tiles; ++k) acc += part[k * phi_floats];
    part[0] = acc;
  }
  if (!s.delta && !s.norm) return;
  const float* row_parts = scratch_all + sc.RowPartsAt();  // dβ's or Σ dY·num's
  float* dd = scratch_all + sc.InvDenAt();  // 1/den, and dd after
  for (int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; row < rows;
       row += stride) {
    float acc = 0.0f;
    for (int k = 0; k < s.tiles; ++k) acc += row_parts[k * rows + row];
    if (s.norm) {
      dd[row] = -acc * dd[row];
      continue;
    }
    float* b = dqkvb + row * s.head_width + 2 * s.dk + s.dh;  // row_width = heads · head_width
    const float beta = math::Sigmoid(a.qkvb[row * s.head_width + 2 * s.dk + s.dh]);
    *b = acc * beta * (1.0f - beta);
  }
}

// With the normaliser and several column tiles, after TileSumKernel: the
// normaliser's terms, which need every column. With dd_t = −(1/den_t) ·
// Σ_tiles Σ_j dY_tj num_tj (from TileSumKernel) and z_t = z₀ + Σ_{s≤t} φk_s
// (the chunk's z₀ from tile 0's checkpoint, as the tiles had it):
//   dφq_t += dd_t z_t;  dφk_s += dz_T + Σ_{t≥s} dd_t φq_t;  dz₀ = dz_T + Σ_t dd_t φq_t.
// One thread per (sequence, head, row r of d_φ) walks the tokens: no barriers.
__global__ void __launch_bounds__(kThreads)
    NormalizerBackwardKernel(Args a, int chunk, int64_t batch, StateView dstate,
                                  float* scratch_all) {
  const Shape& s = a.s;
  const int dp = s.dp;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= batch * s.heads * dp) return;
  const int r = static_cast<int>(e % dp);
  const int64_t bh = e / dp, b = bh / s.heads;
  const int h = static_cast<int>(bh % s.heads);
  const BackwardScratch sc = MakeBackwardScratch(s, chunk, batch, a.time);
  const int64_t chunks = (a.time + chunk - 1) / chunk;
  const float* ckpt_z = scratch_all + bh * s.tiles * chunks * sc.ckpt_floats +
                        static_cast<int64_t>(dp) * s.tw + r;  // tile 0's
  float* dphi_q = scratch_all + sc.DphiQAt();  // the tiles' sums (tile 0's part)
  float* dphi_k = scratch_all + sc.DphiKAt();
  const float* phq = scratch_all + sc.PhiQAt();
  const float* phk = scratch_all + sc.PhiKAt();
  const float* dd = scratch_all + sc.InvDenAt();
  // Φ and dd were written by earlier launches: read-only here (__ldg), so the
  // unrolled walks can issue several tokens' loads ahead of their stores.
  for (int64_t ch = 0; ch < chunks; ++ch) {
    float z = ckpt_z[ch * sc.ckpt_floats];
    const int64_t t1 = min(a.time, (ch + 1) * chunk);
#pragma unroll 4
    for (int64_t t = ch * chunk; t < t1; ++t) {
      const int64_t row = (b * a.time + t) * s.heads + h;
      z += __ldg(phk + row * dp + r);
      dphi_q[row * dp + r] += __ldg(dd + row) * z;
    }
  }
  float* gdz = dstate.base ? HeadZ(dstate, a.slots[b], s, h) : nullptr;
  float dz = gdz ? gdz[r] : 0.0f;
#pragma unroll 4
  for (int64_t t = a.time - 1; t >= 0; --t) {
    const int64_t row = (b * a.time + t) * s.heads + h;
    dz += __ldg(dd + row) * __ldg(phq + row * dp + r);
    dphi_k[row * dp + r] += dz;
  }
  if (gdz) gdz[r] = dz;
}

// The recurrent backward's scratch: BackwardScratch with the checkpoint
// interval as its chunk, then each block's tokens [chunk, 2·tw] (u, v − v̄ of
// the chunk being walked back).
__host__ __device__ inline int64_t RecurrentTokensAt(const BackwardScratch& sc, const Shape& s,
                                                     int64_t chunk, int64_t block) {
  return sc.total + block * chunk * 2 * s.tw;
}

int64_t RecurrentScratchFloats(const Shape& s, int64_t chunk, int64_t batch, int64_t time) {
  const BackwardScratch sc = MakeBackwardScratch(s, static_cast<int>(chunk), batch, time);
  return RecurrentTokensAt(sc, s, chunk, batch * s.heads * s.tiles);
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

  const int64_t chunks = (a.time + chunk - 1) / chunk;
  const int64_t batch = gridDim.x / s.heads, rows_all = batch * a.time * s.heads;
  const BackwardScratch sc = MakeBackwardScratch(s, static_cast<int>(chunk), batch, a.time);
  const int64_t ckpt_floats = sc.ckpt_floats;
  const int64_t block = static_cast<int64_t>(blockIdx.x) * s.tiles + blockIdx.y;
  float* scratch = scratch_all + block * chunks * ckpt_floats;  // the checkpoints
  float* tokens = scratch_all + RecurrentTokensAt(sc, s, chunk, block);
  float* dphi_q = scratch_all + sc.DphiQAt() + blockIdx.y * rows_all * s.dp;
  float* dphi_k = scratch_all + sc.DphiKAt() + blockIdx.y * rows_all * s.dp;
  float* row_part = scratch_all + sc.RowPartsAt() + blockIdx.y * rows_all;  // dβ's or Σ dy·y's
  float* phi_q = scratch_all + sc.PhiQAt();
  float* phi_k = scratch_all + sc.PhiKAt();
  float* inv_den = scratch_all + sc.InvDenAt();
  const bool norm_values = s.norm && split && blockIdx.y == 0;

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
  // gradient is NormalizerBackwardKernel's.
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
      float factor = s.scale, dden = 0.0f, ydot = 0.0f, den = 0.0f;
      bool normalised = false;
      if (s.norm) {
        float den_part = 0.0f;
        for (int r = threadIdx.x; r < s.dp; r += blockDim.x) den_part += c.z[r] * c.phq[r];
        den = BlockSum(den_part, c.scratch);
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
      // The tile's dφq, dφk (and row part; tile 0: φq, φk, 1/den) for
      // FinishBackward.
      const int64_t row = (b * a.time + t) * s.heads + h;
      for (int r = threadIdx.x; r < s.dp; r += blockDim.x) {
        dphi_q[row * s.dp + r] = dphq[r];
        dphi_k[row * s.dp + r] = dphk[r];
        if (norm_values) {
          phi_q[row * s.dp + r] = c.phq[r];
          phi_k[row * s.dp + r] = c.phk[r];
        }
      }
      if (split && threadIdx.x == 0) {
        if (s.delta) row_part[row] = dbeta;
        if (s.norm) row_part[row] = ydot;
        if (norm_values) inv_den[row] = normalised ? 1.0f / den : 0.0f;
      }
      __syncthreads();
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

int64_t BackwardExtraFloats(const Shape& s) {
  return static_cast<int64_t>(s.dp) * s.tw + 3 * s.dp + 3 * s.tw;
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
    return floats <= limit && (s.tiles == 1 || backward || !s.norm || NormalizerFloats(s) <= limit);
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

// A chunkwise kernel's block shape and chunk length C; C == 0 when the
// recurrent kernel runs instead (chunk < 16, or no shape fits).
struct ChunkShape {
  Shape s;
  int chunk = 0;
};

// The longest chunk worth its shared memory: the requested one, but no more
// than `time` rounded up to a power of two (a short sequence is one chunk).
int64_t ChunkCap(int64_t chunk, int64_t time) {
  return std::min<int64_t>(chunk, RoundUpPow2(std::clamp<int64_t>(time, kSolveBlock, 64)));
}

// The chunkwise form's shape: C = the largest of 64, 32, 16 up to ChunkCap
// with all of d_value in one block, else (when tiles are allowed) with the
// widest power-of-two column tile of at least 16 columns; `floats` is the
// shared memory a block of that shape needs. chunk == 0 when none fits.
template <typename Floats>
ChunkShape PickChunk(const FastWeightSpec& spec, int64_t chunk, int64_t time, bool tiles,
                     Floats floats) {
  chunk = ChunkCap(chunk, time);
  const int64_t limit = SharedLimitFloats();
  const int dh = static_cast<int>(spec.DValue());
  for (int c = 64; c >= kSolveBlock; c /= 2) {
    if (c <= chunk && dh <= kThreads && floats(MakeShape(spec, dh), c) <= limit) {
      return {MakeShape(spec, dh), c};
    }
  }
  for (int c = 64; tiles && c >= kSolveBlock; c /= 2) {
    if (c > chunk) continue;
    for (int tw = kThreads; tw >= 16; tw /= 2) {
      if (tw < dh && floats(MakeShape(spec, tw), c) <= limit) return {MakeShape(spec, tw), c};
    }
  }
  return {};
}

// The forward: with the normaliser and tiles, NormalizerKernel must fit too.
ChunkShape PickChunkShape(const FastWeightSpec& spec, int64_t chunk, int64_t time) {
  return PickChunk(spec, chunk, time, true, [](const Shape& s, int c) {
    return std::max(ChunkFloats(s, c), s.tiles > 1 && s.norm ? NormalizerFloats(s) : 0);
  });
}

// The backward: column tiles for every variant (with the normaliser, its terms
// come after the tiles, in NormalizerBackwardKernel).
ChunkShape PickChunkBackwardShape(const FastWeightSpec& spec, int64_t chunk, int64_t time) {
  return PickChunk(spec, chunk, time, true, ChunkBackwardFloats);
}

dim3 Grid(const Shape& s, int64_t batch) {
  return dim3(static_cast<unsigned>(batch * s.heads), static_cast<unsigned>(s.tiles));
}

// Raises `kernel`'s dynamic shared-memory limit to `bytes` on the current
// device, once per size it grows to (the driver call is not free, and every
// decode step of every layer launches these kernels).
template <typename Kernel>
void AllowShared(Kernel kernel, size_t bytes, const char* what) {
  static std::mutex mutex;
  static std::map<std::pair<const void*, int>, size_t> allowed;  // (kernel, device) → bytes
  int device = 0;
  FWP_CUDA_CHECK(what, cudaGetDevice(&device));
  std::lock_guard<std::mutex> lock(mutex);
  size_t& at = allowed[{reinterpret_cast<const void*>(kernel), device}];
  if (bytes <= at) return;
  FWP_CUDA_CHECK(what, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                            static_cast<int>(bytes)));
  at = bytes;
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
                        int64_t time, const StateView& state, float* y, int64_t chunk) {
  if (batch == 0 || time == 0) return;
  const ChunkShape cs = time > 1 ? PickChunkShape(spec, chunk, time) : ChunkShape{};
  Args a{cs.chunk > 0 ? cs.s : PickShape(spec, false), qkvb, favor_proj, slots, time, state};
  if (a.s.tiles == 0)
    Die("fast weights", "shape not supported (CheckAttention refuses it)", __FILE__, __LINE__);
  if (cs.chunk > 0) {
    const size_t shared = SharedBytes(ChunkFloats(a.s, cs.chunk));
    AllowShared(ChunkForwardKernel, shared, "fast-weight chunk smem");
    ChunkForwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, cs.chunk, y);
    FWP_CUDA_LAUNCHED("fast-weight sequence (chunkwise)");
  } else {
    const size_t shared = SharedBytes(CommonFloats(a.s));
    AllowShared(ForwardKernel, shared, "fast-weight smem");
    ForwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, y);
    FWP_CUDA_LAUNCHED("fast-weight sequence");
  }
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
  FastWeightSequence(stream, spec, qkvb, favor_proj, slots, n, 1, state, y, 1);
}

int64_t FastWeightBackwardScratch(const FastWeightSpec& spec, int64_t batch, int64_t time,
                                  int64_t chunk) {
  const ChunkShape cs = PickChunkBackwardShape(spec, chunk, time);
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  if (cs.chunk > 0) return MakeBackwardScratch(cs.s, cs.chunk, batch, time).total;
  return RecurrentScratchFloats(PickShape(spec, true), chunk, batch, time);
}

namespace {

// After either backward kernel has written its tiles' dΦq, dΦk and row parts:
// with several tiles, sums them in tile order (and adds the normaliser's
// terms); then takes ∂L/∂Φq, ∂L/∂Φk (tile 0's part) through the feature map
// into the q and k parts of dqkvb. Row (b·T + t)·heads + h of q (or k) is
// head_width floats after the last.
void FinishBackward(cudaStream_t stream, const FastWeightSpec& spec, const Args& a, int chunk,
                    int64_t batch, float* dqkvb, const StateView& dstate, float* scratch) {
  const BackwardScratch sc = MakeBackwardScratch(a.s, chunk, batch, a.time);
  const int64_t rows = batch * a.time * a.s.heads;
  if (a.s.tiles > 1) {
    const int64_t blocks = std::min<int64_t>(Blocks(2 * rows * a.s.dp, kThreads), 65536);
    TileSumKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a, chunk, batch,
                                                                               dqkvb, scratch);
    FWP_CUDA_LAUNCHED("fast-weight backward tile sums");
    if (a.s.norm) {
      NormalizerBackwardKernel<<<static_cast<unsigned>(
                                          Blocks(batch * a.s.heads * a.s.dp, kThreads)),
                                      kThreads, 0, stream>>>(a, chunk, batch, dstate, scratch);
      FWP_CUDA_LAUNCHED("fast-weight backward normaliser");
    }
  }
  FeatureMapBackward(stream, spec.phi, a.qkvb, rows, spec.d_head, a.s.head_width, a.omega,
                     scratch + sc.DphiQAt(), dqkvb, a.s.head_width);
  FeatureMapBackward(stream, spec.phi, a.qkvb + spec.d_head, rows, spec.d_head, a.s.head_width,
                     a.omega, scratch + sc.DphiKAt(), dqkvb + spec.d_head, a.s.head_width);
}

}  // namespace

void FastWeightSequenceBackward(cudaStream_t stream, const FastWeightSpec& spec,
                                const float* qkvb, const float* favor_proj,
                                const int32_t* slots, int64_t batch, int64_t time,
                                const StateView& state, const float* dy, float* dqkvb,
                                const StateView& dstate, int64_t chunk, float* scratch) {
  if (batch == 0 || time == 0) return;
  const ChunkShape cs = PickChunkBackwardShape(spec, chunk, time);
  chunk = std::max<int64_t>(1, std::min(chunk, time));
  if (cs.chunk > 0) {
    const Args a{cs.s, qkvb, favor_proj, slots, time, state};
    const size_t shared = SharedBytes(ChunkBackwardFloats(a.s, cs.chunk));
    AllowShared(ChunkBackwardKernel, shared, "fast-weight chunk backward smem");
    ChunkBackwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, cs.chunk, dy, dqkvb,
                                                                       dstate, scratch);
    FWP_CUDA_LAUNCHED("fast-weight sequence backward (chunkwise)");
    FinishBackward(stream, spec, a, cs.chunk, batch, dqkvb, dstate, scratch);
    return;
  }
  const Args a{PickShape(spec, true), qkvb, favor_proj, slots, time, state};
  if (a.s.tiles == 0)
    Die("fast weights", "shape not supported (CheckAttention refuses it)", __FILE__, __LINE__);
  const size_t shared = SharedBytes(CommonFloats(a.s) + BackwardExtraFloats(a.s));
  AllowShared(BackwardKernel, shared, "fast-weight backward smem");
  BackwardKernel<<<Grid(a.s, batch), kThreads, shared, stream>>>(a, dy, dqkvb, dstate, chunk,
                                                                 scratch);
  FWP_CUDA_LAUNCHED("fast-weight sequence backward");
  FinishBackward(stream, spec, a, static_cast<int>(chunk), batch, dqkvb, dstate, scratch);
}

}  // namespace fwp::cuda
