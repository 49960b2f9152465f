// CPU emulation of CUDA blocks for tools/cuda_emulation (see run.sh):
// EMULATION SHIM: CUDA block semantics on CPU fibers (ucontext).
#pragma once
#include <setjmp.h>
#include <ucontext.h>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
#include <limits>
#include <functional>
#include <map>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(x)

struct dim3 { unsigned x = 1, y = 1, z = 1; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr int cudaSuccess = 0;
constexpr int cudaDevAttrMaxSharedMemoryPerBlockOptin = 97;
constexpr int cudaFuncAttributeMaxDynamicSharedMemorySize = 8;
inline const char* cudaGetErrorString(int) { return "emu error"; }

namespace emu {
// A fiber is entered the first time through its ucontext and afterwards by
// _setjmp/_longjmp, which switch without the signal-mask system calls that
// swapcontext makes (most of the emulation's time otherwise).
struct Fiber { ucontext_t ctx; jmp_buf jb; std::vector<char> stack; unsigned tid; long syncs = 0; bool done = false; bool started = false; };
inline ucontext_t sched_ctx;
inline jmp_buf sched_jb;
inline std::vector<Fiber> fibers;
inline Fiber* cur = nullptr;
inline dim3 g_block, g_grid, g_blockdim;
inline float* g_smem = nullptr;
inline size_t g_smem_bytes = 0;
inline int64_t g_shared_limit_bytes = 232448;
inline std::map<const void*, size_t> g_attr;
inline std::mt19937 rng(1);
inline int order_mode = 0;  // 0 forward, 1 reverse, 2 random
inline std::vector<float> shfl_buf(1024);
inline long total_syncs = 0;
inline int block_order_mode = 0;

inline void Sync() { cur->syncs++; if (!_setjmp(cur->jb)) _longjmp(sched_jb, 1); }
inline float ShflXor(float v, int off) {
  unsigned t = cur->tid;
  shfl_buf[t] = v;
  Sync();
  float r = shfl_buf[t ^ off];
  Sync();
  return r;
}
inline void (*g_entry)(void*) = nullptr;
inline void* g_entry_arg = nullptr;
inline void Trampoline() { g_entry(g_entry_arg); cur->done = true; _longjmp(sched_jb, 1); }

inline void RunBlock(void (*entry)(void*), void* arg, unsigned threads) {
  g_entry = entry; g_entry_arg = arg;
  fibers.assign(threads, Fiber{});
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    f.tid = t;
    f.stack.resize(1 << 17);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.data();
    f.ctx.uc_stack.ss_size = f.stack.size();
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, (void (*)())Trampoline, 0);
  }
  std::vector<unsigned> order(threads);
  for (;;) {
    for (unsigned t = 0; t < threads; ++t) order[t] = t;
    if (order_mode == 1) std::reverse(order.begin(), order.end());
    else if (order_mode == 2) std::shuffle(order.begin(), order.end(), rng);
    for (unsigned t : order) {
      Fiber& f = fibers[t];
      if (f.done) continue;
      cur = &f;
      if (!_setjmp(sched_jb)) {
        if (!f.started) {
          f.started = true;
          swapcontext(&sched_ctx, &f.ctx);
        } else {
          _longjmp(f.jb, 1);
        }
      }
      cur = nullptr;
    }
    ++total_syncs;
    // Every thread still running must be at the same barrier (or shuffle):
    // threads that returned early no longer take part, as on the GPU (a
    // warp-per-row kernel's idle warps return at once).
    long s0 = -1;
    int ndone = 0;
    for (auto& f : fibers) {
      if (f.done) {
        ++ndone;
        continue;
      }
      if (s0 < 0) s0 = f.syncs;
      if (f.syncs != s0) {
        std::fprintf(stderr, "EMU: divergent barrier: thread %u at barrier %ld, another at %ld (block %u,%u)\n",
                     f.tid, f.syncs, s0, g_block.x, g_block.y);
        std::abort();
      }
    }
    if (ndone == (int)threads) break;
  }
}

template <typename... A>
struct LaunchHelper;

// Launch kernel(args...) over the grid; blocks sequentially.
template <typename K, typename... A>
void Launch(K kernel, dim3 grid, unsigned threads, size_t shared, A... args) {
  if (shared > 48 * 1024 && shared > g_attr[(const void*)kernel]) {
    std::fprintf(stderr, "EMU: launch with %zu bytes dynamic smem > attribute %zu\n", shared, g_attr[(const void*)kernel]);
    std::abort();
  }
  if ((int64_t)shared > g_shared_limit_bytes) { std::fprintf(stderr, "EMU: smem %zu > limit\n", shared); std::abort(); }
  if (grid.x == 0 || grid.y == 0) { std::fprintf(stderr, "EMU: empty grid\n"); std::abort(); }
  const size_t floats = shared / 4, guard = 4096;
  std::vector<float> smem(floats + guard, std::numeric_limits<float>::quiet_NaN());
  const float sentinel = -12345.678f;
  for (size_t i = floats; i < floats + guard; ++i) smem[i] = sentinel;
  g_grid = grid; g_blockdim = dim3(threads);
  auto bound = [&]() { kernel(args...); };
  using B = decltype(bound);
  std::vector<std::pair<unsigned, unsigned>> blocks;
  for (unsigned y = 0; y < grid.y; ++y) for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y});
  if (block_order_mode == 1) std::reverse(blocks.begin(), blocks.end());
  else if (block_order_mode == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
  for (auto [x, y] : blocks) {
    g_block = dim3(x, y);
    std::fill(smem.begin(), smem.begin() + floats, std::numeric_limits<float>::quiet_NaN());
    g_smem = smem.data(); g_smem_bytes = shared;
    RunBlock([](void* p) { (*static_cast<B*>(p))(); }, &bound, threads);
    for (size_t i = floats; i < floats + guard; ++i) {
      if (!(smem[i] == sentinel)) { std::fprintf(stderr, "EMU: shared overflow write at float %zu (size %zu) block %u,%u\n", i, floats, x, y); std::abort(); }
    }
  }
}

struct Idx { unsigned x, y, z; };
inline Idx ThreadIdx() { return Idx{cur->tid, 0, 0}; }
inline Idx BlockIdx() { return Idx{g_block.x, g_block.y, 0}; }
inline Idx BlockDim() { return Idx{g_blockdim.x, 1, 1}; }
inline Idx GridDim() { return Idx{g_grid.x, g_grid.y, 1}; }
}  // namespace emu

#define threadIdx (::emu::ThreadIdx())
#define blockIdx (::emu::BlockIdx())
#define blockDim (::emu::BlockDim())
#define gridDim (::emu::GridDim())
#define __syncthreads() ::emu::Sync()
#define __shfl_xor_sync(mask, v, off) ::emu::ShflXor((v), (off))
using std::min; using std::max;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline int cudaGetDevice(int* d) { *d = 0; return 0; }
inline int cudaDeviceGetAttribute(int* v, int, int) { *v = (int)emu::g_shared_limit_bytes; return 0; }
template <typename K> int cudaFuncSetAttribute(K k, int, int bytes) { emu::g_attr[(const void*)k] = bytes; return 0; }
inline int cudaGetLastError() { return 0; }
// Blocks run one at a time, so a kernel's static __shared__ arrays can be
// function statics: every fiber of the block sees the same one.
#define __shared__ static
using std::isnan;
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
inline int cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  std::memcpy(dst, src, n);
  return 0;
}
inline int cudaStreamSynchronize(cudaStream_t) { return 0; }
// Fibers run one at a time: an atomic add is a plain one.
template <typename T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}

// The real header (reductions, checks) on top of the primitives above; its
// <cuda_runtime.h> and <cublas_v2.h> are the empty ones beside this file.
#include "../../../../kernels/cuda_common.cuh"
