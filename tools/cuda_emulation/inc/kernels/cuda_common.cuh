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
#include <memory>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct dim3 { unsigned x = 1, y = 1, z = 1; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr int cudaSuccess = 0;
constexpr int cudaDevAttrMaxSharedMemoryPerBlockOptin = 97;
constexpr int cudaFuncAttributeMaxDynamicSharedMemorySize = 8;
inline const char* cudaGetErrorString(int e) { return e == 2 ? "out of memory (emulated device)" : "emu error"; }

namespace emu {
// Fibers switch by a six-register context switch (x86-64 System V: the
// callee-saved rbx, rbp, r12–r15 and the stack pointer), a few instructions
// where glibc's _setjmp/_longjmp spent a third of the emulation's time in
// signal-mask and cancellation bookkeeping. Elsewhere: ucontext and
// _setjmp/_longjmp as before. Every translation unit that includes this
// defines the switch, as a weak symbol: the linker keeps one.
#if defined(__x86_64__)
#define FWP_EMU_FAST_SWITCH 1
extern "C" void fwp_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak fwp_emu_switch
  .hidden fwp_emu_switch
  .type fwp_emu_switch, @function
fwp_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fwp_emu_switch, .-fwp_emu_switch
)");
#endif
struct Fiber { ucontext_t ctx; jmp_buf jb; void* sp = nullptr; char* stack = nullptr; unsigned tid; unsigned shuffles = 0; int kind = 0; bool done = false; bool started = false; };
// Fiber stacks, allocated once and reused by every block (allocating and
// zeroing them per block was most of a launch's time).
constexpr size_t kStackBytes = size_t{1} << 17;
inline std::vector<std::unique_ptr<char[]>> stacks;
inline ucontext_t sched_ctx;
inline jmp_buf sched_jb;
inline void* sched_sp = nullptr;
inline std::vector<Fiber> fibers;
inline Fiber* cur = nullptr;
inline dim3 g_block, g_grid, g_blockdim;
inline float* g_smem = nullptr;
inline size_t g_smem_bytes = 0;
// The shared memory a block may opt in to: an H100's, or
// FWP_EMULATION_SHARED_BYTES (a small value forces column tiles).
inline int64_t g_shared_limit_bytes = [] {
  const char* bytes = std::getenv("FWP_EMULATION_SHARED_BYTES");
  return bytes && *bytes ? std::atoll(bytes) : int64_t{232448};
}();
inline std::map<const void*, size_t> g_attr;
// Thread order within a barrier phase and block order (0 forward, 1
// reverse, 2 random): the random one draws from a xorshift generator.
inline uint64_t order_state = 0x9e3779b97f4a7c15ull;
inline uint64_t NextOrder() {
  order_state ^= order_state << 13;
  order_state ^= order_state >> 7;
  order_state ^= order_state << 17;
  return order_state;
}
template <typename T>
void Shuffle(std::vector<T>& v) {  // Fisher–Yates
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>((static_cast<unsigned __int128>(NextOrder()) * i) >> 64);
    std::swap(v[i - 1], v[j]);
  }
}
inline int order_mode = 0;  // 0 forward, 1 reverse, 2 random
// Two halves, used by turns: one barrier per shuffle (see ShflXor).
inline std::vector<float> shfl_buf(2 * 1024);
inline std::vector<float> or_buf(1024);
inline long total_syncs = 0;
inline int block_order_mode = 0;

// kind: 0 a block barrier, 1 a warp shuffle (see RunBlock's checks).
inline void Sync(int kind = 0) {
  cur->kind = kind;
#if FWP_EMU_FAST_SWITCH
  fwp_emu_switch(&cur->sp, sched_sp);
#else
  if (!_setjmp(cur->jb)) _longjmp(sched_jb, 1);
#endif
}
// Each thread writes its value, meets the others at a barrier and reads its
// partner's. The shuffles alternate between the buffer's halves, so one
// barrier is enough: a thread writes this half again only two shuffles later,
// after every thread has passed the next shuffle's barrier and so has read it.
inline float ShflXor(float v, int off) {
  const unsigned t = cur->tid;
  float* buf = shfl_buf.data() + (cur->shuffles++ & 1u) * 1024;
  buf[t] = v;
  Sync(1);
  return buf[t ^ off];
}
// __syncthreads_or: a barrier that also ORs a value over the live threads.
inline int SyncOr(int v) {
  unsigned t = cur->tid;
  or_buf[t] = v ? 1.0f : 0.0f;
  Sync();
  int any = 0;
  for (size_t i = 0; i < fibers.size(); ++i) any |= !fibers[i].done && or_buf[i] != 0.0f;
  Sync();
  return any;
}
inline void (*g_entry)(void*) = nullptr;
inline void* g_entry_arg = nullptr;
inline void Trampoline() {
  g_entry(g_entry_arg);
  cur->done = true;
#if FWP_EMU_FAST_SWITCH
  fwp_emu_switch(&cur->sp, sched_sp);  // never resumed
  std::abort();
#else
  _longjmp(sched_jb, 1);
#endif
}

inline void RunBlock(void (*entry)(void*), void* arg, unsigned threads) {
  g_entry = entry; g_entry_arg = arg;
  fibers.assign(threads, Fiber{});
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = fibers[t];
    f.tid = t;
    while (stacks.size() <= t) stacks.emplace_back(new char[kStackBytes]);
    f.stack = stacks[t].get();
#if FWP_EMU_FAST_SWITCH
    // The first switch pops six zero registers and returns into Trampoline
    // with the stack aligned as after a call.
    auto* top = reinterpret_cast<void**>(
        (reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15}));
    top[-1] = nullptr;
    top[-2] = reinterpret_cast<void*>(&Trampoline);
    for (int r = 3; r <= 8; ++r) top[-r] = nullptr;
    f.sp = top - 8;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, (void (*)())Trampoline, 0);
#endif
  }
  // Each pass resumes every live thread once; it runs to its next barrier (or
  // shuffle) or returns. So the live threads always stand at the same count
  // of barriers; threads that returned early no longer take part, as on the
  // GPU (a warp-per-row kernel's idle warps return at once). A pass is only
  // a faithful step of the GPU when every live thread stands at the same kind
  // of step, and a shuffle only when every lane of its warp takes part: a
  // warp shuffling while another waits at a barrier, or a lane that returned
  // while its warp shuffles, stops the emulation with a message.
  std::vector<unsigned> order(threads);
  for (unsigned t = 0; t < threads; ++t) order[t] = order_mode == 1 ? threads - 1 - t : t;
  const unsigned warps = (threads + 31) / 32;
  std::vector<uint32_t> shuffling(warps);
  for (unsigned live = threads; live > 0;) {
    if (order_mode == 2) Shuffle(order);
    int kind = -1;
    unsigned first = 0;
    std::fill(shuffling.begin(), shuffling.end(), 0u);
    for (unsigned t : order) {
      Fiber& f = fibers[t];
      if (f.done) continue;
      cur = &f;
#if FWP_EMU_FAST_SWITCH
      fwp_emu_switch(&sched_sp, f.sp);
#else
      if (!_setjmp(sched_jb)) {
        if (!f.started) {
          f.started = true;
          swapcontext(&sched_ctx, &f.ctx);
        } else {
          _longjmp(f.jb, 1);
        }
      }
#endif
      cur = nullptr;
      if (f.done) {
        --live;
        continue;
      }
      if (kind < 0) {
        kind = f.kind;
        first = t;
      } else if (f.kind != kind) {
        std::fprintf(stderr, "EMU: thread %u at a %s while thread %u is at a %s (block %u,%u)\n",
                     t, f.kind ? "warp shuffle" : "barrier", first, kind ? "warp shuffle" : "barrier",
                     g_block.x, g_block.y);
        std::abort();
      }
      if (f.kind == 1) shuffling[t / 32] |= 1u << (t % 32);
    }
    for (unsigned w = 0; kind == 1 && w < warps; ++w) {
      const unsigned lanes = std::min(32u, threads - 32 * w);
      const uint32_t all = lanes == 32 ? ~0u : (1u << lanes) - 1;
      if (shuffling[w] != 0 && shuffling[w] != all) {
        std::fprintf(stderr, "EMU: warp %u shuffles with lanes %08x of %08x, the others returned (block %u,%u)\n",
                     w, shuffling[w], all, g_block.x, g_block.y);
        std::abort();
      }
    }
    ++total_syncs;
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
  else if (block_order_mode == 2) Shuffle(blocks);
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
#define __syncthreads_or(v) ::emu::SyncOr(v)
using std::min; using std::max;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

inline int cudaGetDevice(int* d) { *d = 0; return 0; }
// The emulated device is an sm_90 (compute capability 9.0).
constexpr int cudaErrorNoKernelImageForDevice = 209;
constexpr int cudaErrorInvalidDeviceFunction = 98;
constexpr int cudaErrorUnsupportedPtxVersion = 222;
constexpr int cudaDevAttrComputeCapabilityMajor = 75;
constexpr int cudaDevAttrComputeCapabilityMinor = 76;
inline int cudaDeviceGetAttribute(int* v, int attribute, int) {
  *v = attribute == cudaDevAttrComputeCapabilityMajor   ? 9
       : attribute == cudaDevAttrComputeCapabilityMinor ? 0
                                                        : (int)emu::g_shared_limit_bytes;
  return 0;
}
struct cudaFuncAttributes { int binaryVersion = 90, ptxVersion = 90; };
template <typename K> int cudaFuncGetAttributes(cudaFuncAttributes* a, K) { *a = {}; return 0; }
template <typename K> int cudaFuncSetAttribute(K k, int, int bytes) { emu::g_attr[(const void*)k] = bytes; return 0; }
inline int cudaGetLastError() { return 0; }
// Blocks run one at a time, so a kernel's static __shared__ arrays can be
// function statics: every fiber of the block sees the same one.
#define __shared__ static
using std::isnan;
template <typename T> inline T __ldg(const T* p) { return *p; }
struct alignas(16) float4 { float x, y, z, w; };
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

// The runtime's memory, streams and devices on the host, for the backend
// emulation (fwp-cuda-backend-emulation): one device of g_device_bytes;
// device memory starts as 0xff bytes (NaN floats), so reading what no kernel
// or copy wrote shows up; streams are synchronous.
namespace emu {
inline size_t g_device_bytes = size_t{8} << 30;
inline size_t g_device_used = 0;
inline std::map<void*, size_t> g_device_blocks;
}  // namespace emu
constexpr int cudaStreamNonBlocking = 1;
constexpr int cudaHostAllocDefault = 0;
constexpr int cudaErrorMemoryAllocation = 2;
inline int cudaGetDeviceCount(int* n) { *n = 1; return 0; }
inline int cudaSetDevice(int d) { return d == 0 ? 0 : 101; }
inline int cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = new int(0); return 0; }
inline int cudaStreamDestroy(cudaStream_t s) { delete static_cast<int*>(s); return 0; }
inline int cudaMalloc(void** p, size_t n) {
  if (n > emu::g_device_bytes - emu::g_device_used) return cudaErrorMemoryAllocation;
  const size_t rounded = (n + 255) / 256 * 256;
  *p = std::aligned_alloc(256, rounded);
  std::memset(*p, 0xff, rounded);
  emu::g_device_blocks[*p] = rounded;
  emu::g_device_used += rounded;
  return 0;
}
inline int cudaFree(void* p) {
  if (!p) return 0;
  auto it = emu::g_device_blocks.find(p);
  if (it == emu::g_device_blocks.end()) { std::fprintf(stderr, "EMU: cudaFree of %p, not allocated\n", p); std::abort(); }
  emu::g_device_used -= it->second;
  emu::g_device_blocks.erase(it);
  std::free(p);
  return 0;
}
inline int cudaHostAlloc(void** p, size_t n, unsigned) { *p = std::malloc(n); return *p ? 0 : cudaErrorMemoryAllocation; }
inline int cudaFreeHost(void* p) { std::free(p); return 0; }
inline int cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) { std::memset(p, v, n); return 0; }
inline int cudaMemGetInfo(size_t* free, size_t* total) {
  *free = emu::g_device_bytes - emu::g_device_used;
  *total = emu::g_device_bytes;
  return 0;
}

// cuBLAS's single-precision GEMM (column-major, as cuBLAS), summed in double.
typedef int cublasStatus_t;
constexpr int CUBLAS_STATUS_SUCCESS = 0;
enum cublasOperation_t { CUBLAS_OP_N, CUBLAS_OP_T };
enum cublasMath_t { CUBLAS_DEFAULT_MATH, CUBLAS_PEDANTIC_MATH };
struct EmuCublas { cudaStream_t stream = nullptr; };
typedef EmuCublas* cublasHandle_t;
inline cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = new EmuCublas; return 0; }
inline cublasStatus_t cublasDestroy(cublasHandle_t h) { delete h; return 0; }
inline cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) { h->stream = s; return 0; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return 0; }
inline const char* cublasGetStatusString(cublasStatus_t) { return "emu cublas error"; }
inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float* alpha, const float* a, int lda,
                                  const float* b, int ldb, const float* beta, float* c, int ldc) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double sum = 0.0;
      for (int p = 0; p < k; ++p) {
        const float x = ta == CUBLAS_OP_N ? a[i + int64_t(p) * lda] : a[p + int64_t(i) * lda];
        const float y = tb == CUBLAS_OP_N ? b[p + int64_t(j) * ldb] : b[j + int64_t(p) * ldb];
        sum += double(x) * y;
      }
      float& out = c[i + int64_t(j) * ldc];
      // beta 0: C is not read (cuBLAS's rule), so NaN there does not leak.
      out = float(*alpha * sum + (*beta == 0.0f ? 0.0 : double(*beta) * out));
    }
  }
  return 0;
}

// The real header (reductions, checks) on top of the primitives above; its
// <cuda_runtime.h> and <cublas_v2.h> are the empty ones beside this file.
#include "../../../../kernels/cuda_common.cuh"
