// Torch-free math of the BN-ReLU ops, shared by the CPU (g++) and CUDA (nvcc) kernels.
//
// Training BatchNorm followed by ReLU, written per channel as one multiply-add:
//   scale = gamma * invstd,  shift = beta - mean * scale,  z = x * scale + shift,  r = max(z, 0)
// Backward, with dz = (z <= 0) ? 0 : dr (a NaN z passes dr) and M = N * H * W values per channel:
//   sum_dz      = sum(dz)                     (= d beta)
//   sum_dz_xmu  = sum(dz * (x - mean))        (= d gamma / invstd)
//   dx          = dz * scale + x * coef_x + coef_c
// where, in training, coef_x = -scale * invstd^2 * sum_dz_xmu / M and
// coef_c = -scale * sum_dz / M - coef_x * mean (BN's dependence through the batch statistics),
// and in eval coef_x = coef_c = 0. The per-channel coefficients are computed by the caller, so one
// elementwise kernel serves training, eval and a plain affine ReLU.
//
// BN-add-ReLU (ResNet's block tail) is the same with an optional residual r added before the ReLU:
//   z = x * scale + shift + r,  out = max(z, 0),  d r = dz
// and everything else as above (the mask now depends on r too, so the backward reads it again).
#pragma once

#include "host_device.h"

namespace cnnfast {

// Where element (n, c, s) of a 4-d [N, C, H, W] tensor lives, with H and W merged into one
// spatial index s (possible whenever stride_h == W * stride_w). Covers contiguous and
// channels_last tensors and channel slices of either (a DenseNet block's shared buffer).
struct ChannelGeometry {
  int64_t batch, channels, spatial;
  int64_t batch_stride, channel_stride, spatial_stride;

  CNNFAST_HOST_DEVICE int64_t offset(int64_t n, int64_t c, int64_t s) const {
    return n * batch_stride + c * channel_stride + s * spatial_stride;
  }
  CNNFAST_HOST_DEVICE int64_t per_channel() const { return batch * spatial; }
};

// Count, mean and sum of squared deviations of a set of values. Partial results over disjoint
// sets combine exactly (Chan, Golub and LeVeque), so every kernel can split a channel however it
// likes and stay as accurate as a two-pass computation over each part.
template <typename acc_t>
struct Moments {
  acc_t count, mean, m2;
};

// An infinite mean (a set holding +inf or -inf) makes delta infinite, and inf * weight_b is NaN
// where the weight is 0 (an empty set) or the sum inf - inf where the other set is finite: the
// weighted sum of the two means then gives what torch's sum / count gives (+-inf, or NaN for
// +inf and -inf together), so running_mean follows torch after such a batch.
template <typename acc_t>
CNNFAST_HOST_DEVICE Moments<acc_t> combine_moments(const Moments<acc_t>& a, const Moments<acc_t>& b) {
  const acc_t count = a.count + b.count;
  if (count == acc_t(0)) return a;
  const acc_t delta = b.mean - a.mean;
  const acc_t weight_b = b.count / count;
  Moments<acc_t> r;
  r.count = count;
  r.mean = is_finite(delta) ? a.mean + delta * weight_b : a.mean * (a.count / count) + b.mean * weight_b;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * weight_b;
  return r;
}

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
#endif

// z = x * scale + shift. Kept in one place so that the forward and the backward's mask
// recompute the same value.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t bn_affine(acc_t x, acc_t scale, acc_t shift) {
#if defined(__CUDA_ARCH__)
  // Rounded after the multiply, never contracted into a fused multiply-add: every backend (the
  // CPU, the Triton kernels, compiled without fp fusion) then rounds z, and so the ReLU mask, alike.
  return add_rn(mul_rn(x, scale), shift);
#else
  return x * scale + shift;
#endif
}

// z = x * scale + shift + residual: BN's output, then the residual connection's add, in the order
// torch.nn's block computes them. The forward and the backward's mask both go through here.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t bn_add_affine(acc_t x, acc_t scale, acc_t shift, acc_t residual) {
  return bn_affine(x, scale, shift) + residual;
}

// relu(z) as torch computes it: a NaN stays NaN.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t relu_value(acc_t z) {
  return z < acc_t(0) ? acc_t(0) : z;
}

// The ReLU mask as torch's threshold_backward applies it: the gradient stops where relu(z) <= 0,
// so a NaN z (NaN <= 0 is false) passes it.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t relu_masked_grad(acc_t grad, acc_t z) {
  return z <= acc_t(0) ? acc_t(0) : grad;
}

// x * coef_x, BN's dependence through the batch statistics, absent where coef_x is 0 (eval): torch's
// eval backward has no such term, so an infinite x must give dz * scale, not inf * 0 = NaN.
template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t statistics_term(acc_t x, acc_t coef_x) {
  return coef_x == acc_t(0) ? acc_t(0) : x * coef_x;
}

}  // namespace cnnfast
