// CUDA kernels of 2-d max pooling (the math: csrc/common/max_pool2d.h). Torch-free, so that
// tools/check_cuda_kernels.py compiles every instantiation with plain nvcc.
//
// Forward: one thread per output element. Backward: one thread per input element, which gathers
// the gradients of the windows whose argmax it is (max_pool2d_input_grad): no atomics, every
// element written once, and the additions in torch's order, so the result is deterministic and
// bit-identical to the CPU kernels. Indices are int64 with grid-stride loops, so no size limits.
#pragma once

#include "cuda_half.cuh"

#include "../common/max_pool2d.h"

namespace cnnfast {
namespace detail {

constexpr int kMaxPoolThreads = 256;
constexpr long long kMaxPoolMaxBlocks = 0x7fffffffLL;

inline unsigned int max_pool_blocks(int64_t elements) {
  const long long blocks = (elements + kMaxPoolThreads - 1) / kMaxPoolThreads;
  return static_cast<unsigned int>(blocks < kMaxPoolMaxBlocks ? blocks : kMaxPoolMaxBlocks);
}

// Layouts as in csrc/cpu/max_pool2d.cpp: contiguous elements are (plane, h, w) with plane =
// n * C + c; channels_last elements are (n, h, w, c), read through the image pointer + c with
// h_stride = W * C and w_stride = C. The layout is a template parameter so that the contiguous
// path's w_stride = 1 is a constant in the inlined window loops.
template <typename W, bool channels_last, typename scalar_t, typename offset_t>
__global__ void max_pool2d_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                          offset_t* __restrict__ offsets, int64_t elements, int64_t channels,
                                          PoolGeometry g) {
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < elements; o += step) {
    if (!channels_last) {
      const int64_t plane = o / out_plane, within = o - plane * out_plane;
      const int64_t oh = within / g.out_w, ow = within - oh * g.out_w;
      max_pool2d_window<W>(x + plane * in_plane, g.in_w, int64_t(1), g, oh, ow, out + o, offsets + o);
    } else {
      const int64_t position = o / channels, c = o - position * channels;
      const int64_t n = position / out_plane, within = position - n * out_plane;
      const int64_t oh = within / g.out_w, ow = within - oh * g.out_w;
      max_pool2d_window<W>(x + n * in_plane * channels + c, g.in_w * channels, channels, g, oh, ow, out + o,
                           offsets + o);
    }
  }
}

template <typename W, bool channels_last, typename scalar_t, typename offset_t>
__global__ void max_pool2d_backward_kernel(const scalar_t* __restrict__ grad_output,
                                           const offset_t* __restrict__ offsets,
                                           scalar_t* __restrict__ grad_input, int64_t elements,
                                           int64_t channels, PoolGeometry g) {
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < elements; i += step) {
    if (!channels_last) {
      const int64_t plane = i / in_plane, within = i - plane * in_plane;
      const int64_t ih = within / g.in_w, iw = within - ih * g.in_w;
      grad_input[i] = static_cast<scalar_t>(max_pool2d_input_grad<W>(
          grad_output + plane * out_plane, offsets + plane * out_plane, g.out_w, int64_t(1), g, ih, iw));
    } else {
      const int64_t position = i / channels, c = i - position * channels;
      const int64_t n = position / in_plane, within = position - n * in_plane;
      const int64_t ih = within / g.in_w, iw = within - ih * g.in_w;
      const int64_t image = n * out_plane * channels;
      grad_input[i] = static_cast<scalar_t>(max_pool2d_input_grad<W>(
          grad_output + image + c, offsets + image + c, g.out_w * channels, channels, g, ih, iw));
    }
  }
}

// A fixed window's constants would silently replace a geometry they do not describe.
template <typename W>
bool max_pool_window_fits(const PoolGeometry& g) {
  if constexpr (W::fixed) {
    return W::matches(g);
  } else {
    return true;
  }
}

}  // namespace detail

// W: Window3Stride2 when Window3Stride2::matches(g) (cudaErrorInvalidValue otherwise), else
// AnyWindow. g.out_h / g.out_w must be set; x is [batch, channels, in_h, in_w] and out / offsets
// [batch, channels, out_h, out_w], all contiguous or all channels_last.
template <typename scalar_t, typename offset_t, typename W>
cudaError_t launch_max_pool2d_forward(const scalar_t* x, scalar_t* out, offset_t* offsets, int64_t batch,
                                      int64_t channels, bool channels_last, const PoolGeometry& g,
                                      cudaStream_t stream) {
  if (!detail::max_pool_window_fits<W>(g)) return cudaErrorInvalidValue;
  const int64_t elements = batch * channels * g.out_h * g.out_w;
  if (elements <= 0) return cudaSuccess;
  const unsigned int blocks = detail::max_pool_blocks(elements);
  if (channels_last) {
    detail::max_pool2d_forward_kernel<W, true><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        x, out, offsets, elements, channels, g);
  } else {
    detail::max_pool2d_forward_kernel<W, false><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        x, out, offsets, elements, channels, g);
  }
  return cudaGetLastError();
}

// grad_output / offsets: [batch, channels, out_h, out_w]; grad_input: [batch, channels, in_h, in_w].
template <typename scalar_t, typename offset_t, typename W>
cudaError_t launch_max_pool2d_backward(const scalar_t* grad_output, const offset_t* offsets, scalar_t* grad_input,
                                       int64_t batch, int64_t channels, bool channels_last, const PoolGeometry& g,
                                       cudaStream_t stream) {
  if (!detail::max_pool_window_fits<W>(g)) return cudaErrorInvalidValue;
  const int64_t elements = batch * channels * g.in_h * g.in_w;
  if (elements <= 0) return cudaSuccess;
  const unsigned int blocks = detail::max_pool_blocks(elements);
  if (channels_last) {
    detail::max_pool2d_backward_kernel<W, true><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        grad_output, offsets, grad_input, elements, channels, g);
  } else {
    detail::max_pool2d_backward_kernel<W, false><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        grad_output, offsets, grad_input, elements, channels, g);
  }
  return cudaGetLastError();
}

}  // namespace cnnfast

// Explicit instantiation of every launcher for one (scalar type, offset type, window type):
// scalar_t in float, double, __half, __nv_bfloat16; offset_t in uint8_t, int32_t; window_t in
// cnnfast::Window3Stride2, cnnfast::AnyWindow. Used by tools/check_cuda_kernels.py. At global scope.
#define CNNFAST_INSTANTIATE_MAX_POOL2D_KERNELS(scalar_t, offset_t, window_t)                          \
  template cudaError_t cnnfast::launch_max_pool2d_forward<scalar_t, offset_t, window_t>(               \
      const scalar_t*, scalar_t*, offset_t*, int64_t, int64_t, bool, const cnnfast::PoolGeometry&,     \
      cudaStream_t);                                                                                    \
  template cudaError_t cnnfast::launch_max_pool2d_backward<scalar_t, offset_t, window_t>(              \
      const scalar_t*, const offset_t*, scalar_t*, int64_t, int64_t, bool, const cnnfast::PoolGeometry&, \
      cudaStream_t)
