// CUDA kernels of the fused ReLU -> LRN -> max-pool (the math: csrc/common/relu_lrn_max_pool2d.h).
// Torch-free, so that tools/check_cuda_kernels.py compiles every instantiation with plain nvcc.
//
// Forward: one thread per output element, which computes relu -> LRN of its channel at each of its
// window's positions (ReluLrnAt: the `size` channel neighbours of that column) and keeps the
// maximum. Nothing but the output and the argmax is written; the extra reads (an input element is
// read by about (kernel/stride)^2 * size threads, 11 for 3/2 and size 5) hit L1/L2, and neighbouring
// threads read neighbouring columns, so the loads coalesce.
//
// Backward: the max-pool backward gathers grad_output into grad_lrn (a temporary of x's size the
// caller provides), then the LRN backward runs on it with relu(x) recomputed on load and the
// ReLU's mask on dx: the two ops' own kernels, one after the other on one stream.
#pragma once

#include "lrn_kernels.cuh"
#include "max_pool2d_kernels.cuh"

#include "../common/relu_lrn_max_pool2d.h"

namespace cnnfast {
namespace detail {

// Layouts as in max_pool2d_kernels.cuh: contiguous outputs are (plane, oh, ow) with plane =
// n * C + c; channels_last ones are (n, oh, ow, c).
template <typename W, bool channels_last, typename scalar_t, typename offset_t>
__global__ void relu_lrn_max_pool2d_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out,
                                                   offset_t* __restrict__ offsets, int64_t elements,
                                                   int64_t channels, PoolGeometry g,
                                                   LrnParams<acc_type<scalar_t>> p) {
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // beta is uniform: every thread takes the same branch once (as lrn_forward_kernel).
  lrn_dispatch_power(p.beta, [&](auto power) {
    using Power = decltype(power);
    for (int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; o < elements; o += step) {
      int64_t n, c, within;
      if (!channels_last) {
        const int64_t plane = o / out_plane;
        n = plane / channels;
        c = plane - n * channels;
        within = o - plane * out_plane;
      } else {
        const int64_t position = o / channels;
        c = o - position * channels;
        n = position / out_plane;
        within = position - n * out_plane;
      }
      const int64_t oh = within / g.out_w, ow = within - oh * g.out_w;
      const ReluLrnAt<Power, scalar_t> source{x + n * channels * in_plane,
                                              channels_last ? g.in_w * channels : g.in_w,
                                              channels_last ? channels : int64_t(1), c, p};
      max_pool2d_window_over<W>(source, g, oh, ow, out + o, offsets + o);
    }
  });
}

}  // namespace detail

// W as launch_max_pool2d_forward's; g.out_h / g.out_w set; p from x's layout (p.channel_stride:
// in_h * in_w contiguous, 1 channels_last). x is [batch, channels, in_h, in_w], out / offsets
// [batch, channels, out_h, out_w], all contiguous or all channels_last.
template <typename scalar_t, typename offset_t, typename W>
cudaError_t launch_relu_lrn_max_pool2d_forward(const scalar_t* x, scalar_t* out, offset_t* offsets, int64_t batch,
                                               int64_t channels, bool channels_last, const PoolGeometry& g,
                                               const LrnParams<acc_type<scalar_t>>& p, cudaStream_t stream) {
  if (!detail::max_pool_window_fits<W>(g)) return cudaErrorInvalidValue;
  const int64_t elements = batch * channels * g.out_h * g.out_w;
  if (elements <= 0) return cudaSuccess;
  const unsigned int blocks = detail::max_pool_blocks(elements);
  if (channels_last) {
    detail::relu_lrn_max_pool2d_forward_kernel<W, true><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        x, out, offsets, elements, channels, g, p);
  } else {
    detail::relu_lrn_max_pool2d_forward_kernel<W, false><<<blocks, detail::kMaxPoolThreads, 0, stream>>>(
        x, out, offsets, elements, channels, g, p);
  }
  return cudaGetLastError();
}

// grad_lrn: a temporary of x's shape and layout; global_ring:
// lrn_backward_global_ring_elements(p, batch * in_h * in_w) accumulators, or nullptr when that is 0.
template <typename scalar_t, typename offset_t, typename W>
cudaError_t launch_relu_lrn_max_pool2d_backward(const scalar_t* grad_output, const offset_t* offsets,
                                                const scalar_t* x, scalar_t* grad_lrn, scalar_t* grad_input,
                                                int64_t batch, int64_t channels, bool channels_last,
                                                const PoolGeometry& g, const LrnParams<acc_type<scalar_t>>& p,
                                                acc_type<scalar_t>* global_ring, cudaStream_t stream) {
  const cudaError_t pooled = launch_max_pool2d_backward<scalar_t, offset_t, W>(
      grad_output, offsets, grad_lrn, batch, channels, channels_last, g, stream);
  if (pooled != cudaSuccess) return pooled;
  const int64_t spatial = g.in_h * g.in_w;
  return launch_lrn_backward<scalar_t, LoadRelu>(grad_lrn, x, grad_input, batch * spatial, spatial, channels_last, p,
                                                 global_ring, stream);
}

}  // namespace cnnfast

// Explicit instantiation of every launcher for one (scalar type, offset type, window type), as
// CNNFAST_INSTANTIATE_MAX_POOL2D_KERNELS. Used by tools/check_cuda_kernels.py. At global scope.
#define CNNFAST_INSTANTIATE_RELU_LRN_MAX_POOL2D_KERNELS(scalar_t, offset_t, window_t)                      \
  template cudaError_t cnnfast::launch_relu_lrn_max_pool2d_forward<scalar_t, offset_t, window_t>(           \
      const scalar_t*, scalar_t*, offset_t*, int64_t, int64_t, bool, const cnnfast::PoolGeometry&,          \
      const cnnfast::LrnParams<cnnfast::acc_type<scalar_t>>&, cudaStream_t);                                \
  template cudaError_t cnnfast::launch_relu_lrn_max_pool2d_backward<scalar_t, offset_t, window_t>(          \
      const scalar_t*, const offset_t*, const scalar_t*, scalar_t*, scalar_t*, int64_t, int64_t, bool,      \
      const cnnfast::PoolGeometry&, const cnnfast::LrnParams<cnnfast::acc_type<scalar_t>>&,                 \
      cnnfast::acc_type<scalar_t>*, cudaStream_t)
