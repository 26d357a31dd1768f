// CUDA kernels of local response normalisation (the math: csrc/common/lrn.h). Torch-free, so that
// tools/check_cuda_kernels.py compiles every instantiation with plain nvcc.
//
// One thread per column (lanes = 1): a thread walks the C channels of one (outer, inner) position
// of x's [outer][C][inner] walk (csrc/op_helpers.h LrnGeometry) with the shared running-window
// routines. Where the channels are not innermost, neighbouring threads take neighbouring inner
// positions, so every step of the channel walk is a coalesced row access across the warp.
#pragma once

#include "cuda_half.cuh"

#include "../common/lrn.h"

namespace cnnfast {
namespace detail {

constexpr int kLrnThreads = 128;
// Backward blocks shrink to this many threads when kLrnThreads rings do not fit kLrnSharedBytes.
constexpr int kLrnNarrowThreads = 32;
// The default dynamic shared memory limit, usable without cudaFuncSetAttribute on every GPU.
constexpr long long kLrnSharedBytes = 48 * 1024;
constexpr long long kLrnMaxBlocks = 0x7fffffffLL;

// Channel 0 of `column`: the CPU's layout walk (csrc/cpu/lrn.cpp), one column at a time.
__device__ __forceinline__ int64_t lrn_column_offset(int64_t column, int64_t channels, int64_t spatial,
                                                     bool channels_last) {
  if (channels_last) return column * channels;
  const int64_t n = column / spatial;
  return n * channels * spatial + (column - n * spatial);
}

template <typename acc_t>
long long lrn_ring_bytes(const LrnParams<acc_t>& p, int threads) {
  return 2LL * p.ring_length() * threads * static_cast<long long>(sizeof(acc_t));
}

// Threads per backward block whose rings fit shared memory; 0 when even kLrnNarrowThreads do not
// (the rings then live in a global buffer).
template <typename acc_t>
int lrn_backward_shared_threads(const LrnParams<acc_t>& p) {
  if (lrn_ring_bytes(p, kLrnThreads) <= kLrnSharedBytes) return kLrnThreads;
  if (lrn_ring_bytes(p, kLrnNarrowThreads) <= kLrnSharedBytes) return kLrnNarrowThreads;
  return 0;
}

inline unsigned int lrn_blocks(int64_t columns, int threads) {
  const long long blocks = (columns + threads - 1) / threads;
  return static_cast<unsigned int>(blocks < kLrnMaxBlocks ? blocks : kLrnMaxBlocks);
}

// beta picks the Power here, on the device: it is uniform, so every thread takes the same branch
// once and walks its columns branch-free. (Picking it on the host would hand the
// __host__ __device__ lrn_dispatch_power a host-only launch body, which nvcc warns about.)
template <typename scalar_t>
__global__ void lrn_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, int64_t columns,
                                   int64_t spatial, bool channels_last, LrnParams<acc_type<scalar_t>> p) {
  using acc_t = acc_type<scalar_t>;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  lrn_dispatch_power(p.beta, [&](auto power) {
    for (int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; column < columns;
         column += step) {
      const int64_t offset = lrn_column_offset(column, p.channels, spatial, channels_last);
      acc_t window_sum[1];
      lrn_forward_columns<decltype(power), scalar_t, acc_t>(x + offset, y + offset, 1, p, window_sum);
    }
  });
}

// global_ring: nullptr when the rings are in dynamic shared memory (2 * ring_length() * blockDim.x
// accumulators, slot r of thread t at r * blockDim.x + t so that a warp's accesses hit distinct
// banks); otherwise 2 * ring_length() * columns accumulators, slot r of column j at
// r * columns + j, which keeps the warp's accesses coalesced. Load: LoadAsIs, or LoadRelu for the
// fused ReLU-LRN-max-pool's backward (relu(x) recomputed on load, the ReLU's mask on dx).
template <typename scalar_t, typename Load>
__global__ void lrn_backward_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                    scalar_t* __restrict__ dx, int64_t columns, int64_t spatial,
                                    bool channels_last, LrnParams<acc_type<scalar_t>> p,
                                    acc_type<scalar_t>* __restrict__ global_ring) {
  using acc_t = acc_type<scalar_t>;
  // Declared as bytes: the element type differs between instantiations of one extern array.
  extern __shared__ __align__(sizeof(double)) unsigned char lrn_shared_ring[];
  const int64_t ring = p.ring_length();
  acc_t window_sum[1];
  acc_t t_sum[1];
  LrnBackwardScratch<acc_t> scratch;
  scratch.window_sum = window_sum;
  scratch.t_sum = t_sum;
  if (global_ring == nullptr) {
    acc_t* shared = reinterpret_cast<acc_t*>(lrn_shared_ring);
    scratch.ring_t = shared + threadIdx.x;
    scratch.ring_power = shared + ring * blockDim.x + threadIdx.x;
    scratch.ring_stride = blockDim.x;
  } else {
    scratch.ring_stride = columns;
  }
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  lrn_dispatch_power(p.beta, [&](auto power) {
    for (int64_t column = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; column < columns;
         column += step) {
      if (global_ring != nullptr) {
        scratch.ring_t = global_ring + column;
        scratch.ring_power = global_ring + ring * columns + column;
      }
      const int64_t offset = lrn_column_offset(column, p.channels, spatial, channels_last);
      lrn_backward_columns<decltype(power), scalar_t, acc_t, Load>(dy + offset, x + offset, dx + offset, 1, p, scratch);
    }
  });
}

}  // namespace detail

// Accumulators the caller must provide to launch_lrn_backward as `global_ring`; 0 when the rings
// fit shared memory (the common case: AlexNet's size 5 needs 5 KiB per 128 threads).
template <typename acc_t>
int64_t lrn_backward_global_ring_elements(const LrnParams<acc_t>& p, int64_t columns) {
  return detail::lrn_backward_shared_threads(p) == 0 ? 2 * p.ring_length() * columns : 0;
}

// x as [outer][C][inner] (csrc/op_helpers.h LrnGeometry): columns = outer * inner; spatial = inner.
// channels_last: each column's C values are adjacent (p.channel_stride = 1); otherwise column
// (o, i) starts at o * C * inner + i.
template <typename scalar_t>
cudaError_t launch_lrn_forward(const scalar_t* x, scalar_t* y, int64_t columns, int64_t spatial,
                               bool channels_last, const LrnParams<acc_type<scalar_t>>& p,
                               cudaStream_t stream) {
  if (columns <= 0) return cudaSuccess;
  detail::lrn_forward_kernel<scalar_t>
      <<<detail::lrn_blocks(columns, detail::kLrnThreads), detail::kLrnThreads, 0, stream>>>(
          x, y, columns, spatial, channels_last, p);
  return cudaGetLastError();
}

// global_ring: lrn_backward_global_ring_elements(p, columns) accumulators, or nullptr when that is 0.
template <typename scalar_t, typename Load = LoadAsIs>
cudaError_t launch_lrn_backward(const scalar_t* dy, const scalar_t* x, scalar_t* dx, int64_t columns,
                                int64_t spatial, bool channels_last, const LrnParams<acc_type<scalar_t>>& p,
                                acc_type<scalar_t>* global_ring, cudaStream_t stream) {
  if (columns <= 0) return cudaSuccess;
  const int shared_threads = detail::lrn_backward_shared_threads(p);
  if (shared_threads == 0 && global_ring == nullptr) return cudaErrorInvalidValue;
  const int threads = shared_threads == 0 ? detail::kLrnThreads : shared_threads;
  const size_t shared_bytes =
      shared_threads == 0 ? 0 : static_cast<size_t>(detail::lrn_ring_bytes(p, shared_threads));
  detail::lrn_backward_kernel<scalar_t, Load><<<detail::lrn_blocks(columns, threads), threads, shared_bytes, stream>>>(
      dy, x, dx, columns, spatial, channels_last, p, shared_threads == 0 ? global_ring : nullptr);
  return cudaGetLastError();
}

}  // namespace cnnfast

// Explicit instantiation of every launcher for one scalar type (float, double, __half,
// __nv_bfloat16); used by tools/check_cuda_kernels.py. At global scope.
#define CNNFAST_INSTANTIATE_LRN_KERNELS(scalar_t)                                                       \
  template cudaError_t cnnfast::launch_lrn_forward<scalar_t>(                                           \
      const scalar_t*, scalar_t*, int64_t, int64_t, bool,                                               \
      const cnnfast::LrnParams<cnnfast::acc_type<scalar_t>>&, cudaStream_t);                            \
  template cudaError_t cnnfast::launch_lrn_backward<scalar_t>(                                          \
      const scalar_t*, const scalar_t*, scalar_t*, int64_t, int64_t, bool,                              \
      const cnnfast::LrnParams<cnnfast::acc_type<scalar_t>>&, cnnfast::acc_type<scalar_t>*, cudaStream_t)
