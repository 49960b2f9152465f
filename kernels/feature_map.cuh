// Block-wide feature maps for CUDA kernels: every thread of the block calls
// these together (they synchronise). Used by the standalone feature-map op and
// inside the fast-weight kernels. Same definitions as feature_map.h, with the
// per-element math from shared_math.h.
#pragma once

#include "kernels/cuda_common.cuh"
#include "kernels/feature_map.h"
#include "kernels/shared_math.h"

namespace fwp::cuda {

__device__ __forceinline__ int PhiDim(const FeatureMapSpec& s, int d) {
  switch (s.kind) {
    case FeatureMapKind::kDpfp: return 2 * d * s.nu;
    case FeatureMapKind::kFavor: return 2 * s.favor_features;
    default: return d;
  }
}

__device__ __forceinline__ float FavorDot(const float* x, int d, const float* omega, int f) {
  const float* w = omega + static_cast<int64_t>(f) * d;
  float dot = 0.0f;
  for (int i = 0; i < d; ++i) dot += w[i] * x[i];
  return dot;
}

// Element idx of φ(x) before normalisation; half_sq = ½‖x‖² (favor only).
__device__ __forceinline__ float PhiValue(const FeatureMapSpec& spec, const float* x, int d,
                                          const float* omega, int idx, float half_sq) {
  switch (spec.kind) {
    case FeatureMapKind::kDpfp: {
      const int two_d = 2 * d;
      const int j = idx / two_d + 1, i = idx % two_d;
      return math::DpfpR(x, d, i) * math::DpfpR(x, d, math::RollSource(i, j, two_d));
    }
    case FeatureMapKind::kElu1: return math::Elu1(x[idx]);
    case FeatureMapKind::kRelu: return math::Relu(x[idx]);
    case FeatureMapKind::kIdentity: return x[idx];
    case FeatureMapKind::kFavor: {
      const int m = spec.favor_features;
      const float dot = FavorDot(x, d, omega, idx % m);
      const float scale = rsqrtf(static_cast<float>(2 * m));
      return expf((idx < m ? dot : -dot) - half_sq) * scale;
    }
  }
  return 0.0f;
}


// φ(x) into phi (d_φ floats; any memory the block may write); `normalise`
// overrides spec.sum_norm (the backward needs the raw features). scratch:
// ≥ 32 floats of shared memory. Returns Σφ before normalisation. With
// spec.sum_norm, favor's raw features leave out the factors normalisation
// cancels (feature_map.cc: a softmax over ±ω_f·x, which neither overflows
// nor underflows), as the CPU's do.
__device__ inline float PhiBlock(const FeatureMapSpec& spec, const float* x, int d,
                          const float* omega, float* phi, float* scratch, bool normalise) {
  const int dp = PhiDim(spec, d);
  float half_sq = 0.0f;
  if (spec.kind == FeatureMapKind::kFavor && spec.sum_norm) {
    const int m = spec.favor_features;
    float top = 0.0f;
    for (int f = threadIdx.x; f < m; f += blockDim.x) {
      const float dot = FavorDot(x, d, omega, f);
      phi[f] = dot;
      phi[m + f] = -dot;
      top = fmaxf(top, fabsf(dot));
    }
    top = BlockMax(top, scratch);
    float local = 0.0f;
    for (int f = threadIdx.x; f < m; f += blockDim.x) {  // each thread its own f
      const float dot = phi[f];
      phi[f] = expf(dot - top);
      phi[m + f] = expf(-dot - top);
      local += phi[f] + phi[m + f];
    }
    const float sum = BlockSum(local, scratch);  // ends with a barrier: phi is seen whole
    if (normalise) {
      const float inv = 1.0f / sum;  // ≥ 1: the largest term is e⁰
      for (int idx = threadIdx.x; idx < dp; idx += blockDim.x) phi[idx] *= inv;
      __syncthreads();
    }
    return sum;
  }
  if (spec.kind == FeatureMapKind::kFavor) {
    float partial = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) partial += x[i] * x[i];
    half_sq = 0.5f * BlockSum(partial, scratch);
  }
  float local = 0.0f;
  for (int idx = threadIdx.x; idx < dp; idx += blockDim.x) {
    const float v = PhiValue(spec, x, d, omega, idx, half_sq);
    phi[idx] = v;
    local += v;
  }
  const float sum = BlockSum(local, scratch);  // ends with a barrier
  if (normalise && sum > 0.0f) {
    const float inv = 1.0f / sum;
    for (int idx = threadIdx.x; idx < dp; idx += blockDim.x) phi[idx] *= inv;
    __syncthreads();
  }
  return sum;
}

// PhiBlock for one warp (all 32 lanes call it together; no block barrier), with
// spec.sum_norm's normalisation. Lane l writes the elements l, l + 32, ….
__device__ inline void PhiWarp(const FeatureMapSpec& spec, const float* x, int d,
                               const float* omega, float* phi) {
  const int dp = PhiDim(spec, d), lane = threadIdx.x % 32;
  float half_sq = 0.0f;
  if (spec.kind == FeatureMapKind::kFavor && spec.sum_norm) {  // as in PhiBlock
    const int m = spec.favor_features;
    float top = 0.0f;
    for (int f = lane; f < m; f += 32) {
      const float dot = FavorDot(x, d, omega, f);
      phi[f] = dot;
      phi[m + f] = -dot;
      top = fmaxf(top, fabsf(dot));
    }
    top = WarpMax(top);
    float local = 0.0f;
    for (int f = lane; f < m; f += 32) {  // each lane its own f: no lane reads another's
      const float dot = phi[f];
      phi[f] = expf(dot - top);
      phi[m + f] = expf(-dot - top);
      local += phi[f] + phi[m + f];
    }
    const float inv = 1.0f / WarpSum(local);  // ≥ 1: the largest term is e⁰
    for (int f = lane; f < m; f += 32) {
      phi[f] *= inv;
      phi[m + f] *= inv;
    }
    return;
  }
  if (spec.kind == FeatureMapKind::kFavor) {
    float partial = 0.0f;
    for (int i = lane; i < d; i += 32) partial += x[i] * x[i];
    half_sq = 0.5f * WarpSum(partial);
  }
  float local = 0.0f;
  for (int idx = lane; idx < dp; idx += 32) {
    const float v = PhiValue(spec, x, d, omega, idx, half_sq);
    phi[idx] = v;
    local += v;
  }
  const float sum = WarpSum(local);
  if (spec.sum_norm && sum > 0.0f) {
    const float inv = 1.0f / sum;
    for (int idx = lane; idx < dp; idx += 32) phi[idx] *= inv;
  }
}

// ∂L/∂x (written into dx, d floats) from ∂L/∂φ. Shared scratch: g and dg
// (d_φ floats each), r (2d floats), scratch (≥ 32 floats).
__device__ inline void PhiBackwardBlock(const FeatureMapSpec& spec, const float* x, int d,
                                 const float* omega, const float* dphi, float* dx, float* g,
                                 float* dg, float* r, float* scratch) {
  const int dp = PhiDim(spec, d);
  const float sum = PhiBlock(spec, x, d, omega, g, scratch, /*normalise=*/false);
  if (spec.sum_norm && sum > 0.0f) {
    // φ = g / Σg ⇒ ∂L/∂g_i = (∂L/∂φ_i − Σ_j ∂L/∂φ_j φ_j) / Σg.
    const float inv = 1.0f / sum;
    float partial = 0.0f;
    for (int i = threadIdx.x; i < dp; i += blockDim.x) partial += dphi[i] * g[i] * inv;
    const float dot = BlockSum(partial, scratch);
    for (int i = threadIdx.x; i < dp; i += blockDim.x) dg[i] = (dphi[i] - dot) * inv;
  } else {
    for (int i = threadIdx.x; i < dp; i += blockDim.x) dg[i] = dphi[i];
  }
  __syncthreads();
  switch (spec.kind) {
    case FeatureMapKind::kDpfp: {
      const int two_d = 2 * d;
      for (int i = threadIdx.x; i < two_d; i += blockDim.x) r[i] = math::DpfpR(x, d, i);
      __syncthreads();
      // ∂L/∂r_i gathers the two products r_i enters per roll j: as the
      // first factor at output i, and as the rolled factor at (i + j) mod 2d.
      auto dr = [&](int i) {
        float acc = 0.0f;
        for (int j = 1; j <= spec.nu; ++j) {
          const float* dgj = dg + (j - 1) * two_d;
          const int src = static_cast<int>(math::RollSource(i, j, two_d));
          const int dst = (i + j) % two_d;
          acc += dgj[i] * r[src] + dgj[dst] * r[dst];
        }
        return acc;
      };
      for (int i = threadIdx.x; i < d; i += blockDim.x) {
        dx[i] = (x[i] > 0.0f ? dr(i) : 0.0f) - (x[i] < 0.0f ? dr(d + i) : 0.0f);
      }
      break;
    }
    case FeatureMapKind::kElu1:
      for (int i = threadIdx.x; i < d; i += blockDim.x) dx[i] = dg[i] * math::Elu1Grad(x[i]);
      break;
    case FeatureMapKind::kRelu:
      for (int i = threadIdx.x; i < d; i += blockDim.x) dx[i] = x[i] > 0.0f ? dg[i] : 0.0f;
      break;
    case FeatureMapKind::kIdentity:
      for (int i = threadIdx.x; i < d; i += blockDim.x) dx[i] = dg[i];
      break;
    case FeatureMapKind::kFavor: {
      // ∂g_f/∂x = g_f (ω_f − x), ∂g_{m+f}/∂x = g_{m+f} (−ω_f − x).
      const int m = spec.favor_features;
      float partial = 0.0f;
      for (int f = threadIdx.x; f < m; f += blockDim.x) {
        partial += dg[f] * g[f] + dg[m + f] * g[m + f];
      }
      const float along_x = BlockSum(partial, scratch);
      for (int f = threadIdx.x; f < m; f += blockDim.x) {
        r[f] = dg[f] * g[f] - dg[m + f] * g[m + f];  // r holds m floats for favor
      }
      __syncthreads();
      for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = 0.0f;
        for (int f = 0; f < m; ++f) acc += r[f] * omega[static_cast<int64_t>(f) * d + i];
        dx[i] = acc - along_x * x[i];
      }
      break;
    }
  }
  __syncthreads();
}

// Shared floats PhiBackwardBlock needs for g, dg and r.
inline int64_t PhiBackwardShared(const FeatureMapSpec& spec, int64_t d) {
  const int64_t dp = spec.OutputDim(d);
  const int64_t r = spec.kind == FeatureMapKind::kFavor ? spec.favor_features : 2 * d;
  return 2 * dp + r;
}

}  // namespace fwp::cuda
