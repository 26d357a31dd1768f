// CUDA kernels of the BN-ReLU and BN-add-ReLU ops (the math: csrc/common/batch_norm.h); BN-ReLU is
// BN-add-ReLU without a residual (a template flag of each kernel). Torch-free, so that
// tools/check_cuda_kernels.py compiles every instantiation with plain nvcc.
//
// Every kernel walks a [N, C, S] tensor (ChannelGeometry) the same way. A block has
// lanes x rows = 256 threads: threadIdx.x picks a channel of the block's tile of `lanes` channels,
// threadIdx.y a position along the row index r = n * S + s of that channel. Where channels are
// closest in memory (channels_last and its channel slices) lanes = 32 (fewer for C < 32), so a
// warp reads adjacent channels of one (n, s); otherwise (NCHW) lanes = 1 and a warp reads 32
// adjacent r of one channel. Either way each warp access is coalesced. blockIdx.x walks the
// channel tiles, blockIdx.y picks one of `splits` contiguous ranges of r, so that a handful of
// channels still fills the GPU. Each thread steps through its range kBnChunk values at a time
// (loads in flight) with an incremental (n, s) cursor (no division per element); offsets are int64.
//
// Reductions (statistics, backward sums) are deterministic: each thread accumulates in a fixed
// order, a block combines its rows in a fixed tree, and with several splits the blocks write
// partials to a workspace that a finalize kernel combines, again in a fixed order. No atomics, and
// the split depends only on the geometry, so results are bit-identical from run to run and across
// GPUs.
#pragma once

#include "cuda_half.cuh"

#include "../common/batch_norm.h"

namespace cnnfast {
namespace detail {

constexpr int kBnThreads = 256;
constexpr int kBnMaxLanes = 32;
// Values a thread reads before it does arithmetic on them (also the size of one Welford chunk).
constexpr int kBnChunk = 4;
// Within CUDA's limits for gridDim.y (and far within gridDim.x's); tiles beyond it are walked by
// a grid-stride loop, splits never exceed it.
constexpr int64_t kBnMaxGrid = 65535;
// Reductions aim at about this many blocks (~8 per SM of an H100), with at least
// kBnReduceMinPerThread values per thread so that the partials stay few.
constexpr int64_t kBnReduceTargetBlocks = 1024;
constexpr int64_t kBnReduceMinPerThread = 16;
// Elementwise kernels: about this many values per thread amortise a thread's setup.
constexpr int64_t kBnElementwisePerThread = 8;

inline int64_t bn_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline bool bn_empty(const ChannelGeometry& g) { return g.batch <= 0 || g.channels <= 0 || g.spatial <= 0; }

inline bool bn_same_shape(const ChannelGeometry& a, const ChannelGeometry& b) {
  return a.batch == b.batch && a.channels == b.channels && a.spatial == b.spatial;
}

// How one launch covers a geometry (see the top of this file).
struct BnWalk {
  int lanes, rows;  // block shape: lanes * rows = kBnThreads, both powers of two
  int64_t tiles;    // channel tiles of `lanes` channels
  int64_t splits;   // contiguous ranges of r per channel, <= kBnMaxGrid, none empty
  int64_t chunk;    // length of every range but the last

  dim3 block() const { return dim3(static_cast<unsigned int>(lanes), static_cast<unsigned int>(rows)); }
  dim3 grid() const {
    return dim3(static_cast<unsigned int>(tiles < kBnMaxGrid ? tiles : kBnMaxGrid),
                static_cast<unsigned int>(splits));
  }
};

// Lanes along channels when a channel step is shorter than a row step (32, or the power of two
// covering C when C < 32), else 1. Only speed depends on this: every kernel is correct either way.
inline int bn_lanes(const ChannelGeometry& g) {
  const int64_t row_stride = g.spatial > 1 ? g.spatial_stride : g.batch_stride;
  if (g.channels <= 1 || g.channel_stride >= row_stride) return 1;
  int lanes = 1;
  while (lanes < kBnMaxLanes && lanes < g.channels) lanes *= 2;
  return lanes;
}

// reduce: few blocks with much work each (every block costs a partial); otherwise as many blocks
// as give each thread about kBnElementwisePerThread values.
inline BnWalk bn_walk(const ChannelGeometry& g, bool reduce) {
  BnWalk w;
  w.lanes = bn_lanes(g);
  w.rows = kBnThreads / w.lanes;
  w.tiles = bn_ceil_div(g.channels, w.lanes);
  const int64_t r_count = g.per_channel();
  int64_t splits;
  if (reduce) {
    const int64_t launched_tiles = w.tiles < kBnMaxGrid ? w.tiles : kBnMaxGrid;
    const int64_t for_occupancy = bn_ceil_div(kBnReduceTargetBlocks, launched_tiles);
    const int64_t for_work = bn_ceil_div(r_count, w.rows * kBnReduceMinPerThread);
    splits = for_occupancy < for_work ? for_occupancy : for_work;
  } else {
    splits = bn_ceil_div(r_count, w.rows * kBnElementwisePerThread);
  }
  if (splits > kBnMaxGrid) splits = kBnMaxGrid;
  if (splits < 1) splits = 1;
  w.chunk = bn_ceil_div(r_count, splits);
  w.splits = bn_ceil_div(r_count, w.chunk);  // drops ranges that rounding left empty
  return w;
}

// A thread's position r = n * spatial + s, stepped by a fixed amount without dividing.
struct BnRowCursor {
  int64_t r, n, s;
  int64_t step, step_n, step_s, spatial;

  __device__ __forceinline__ BnRowCursor(int64_t start, int64_t step_, int64_t spatial_)
      : r(start), step(step_), spatial(spatial_) {
    n = start / spatial;
    s = start - n * spatial;
    step_n = step / spatial;
    step_s = step - step_n * spatial;
  }
  __device__ __forceinline__ void advance() {
    r += step;
    n += step_n;
    s += step_s;
    if (s >= spatial) {
      s -= spatial;
      ++n;
    }
  }
};

// The next kBnChunk positions of a thread's range [.., end): valid[i] is false past the end (a
// suffix of the chunk). The caller loops while cursor.r < end, so valid[0] always holds.
struct BnChunk {
  int64_t n[kBnChunk], s[kBnChunk];
  bool valid[kBnChunk];

  // Element i of the chunk in a tensor of geometry g, from its channel's first element.
  __device__ __forceinline__ int64_t offset(int i, const ChannelGeometry& g) const {
    return n[i] * g.batch_stride + s[i] * g.spatial_stride;
  }
};

// The chunk's values of one channel (`base` = its first element) in acc_t, 0 past the end; all
// loads are issued before any arithmetic on them.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void bn_load_chunk(const scalar_t* base, const ChannelGeometry& g, const BnChunk& p,
                                              acc_t (&out)[kBnChunk]) {
#pragma unroll
  for (int i = 0; i < kBnChunk; ++i) out[i] = p.valid[i] ? static_cast<acc_t>(base[p.offset(i, g)]) : acc_t(0);
}

__device__ __forceinline__ void bn_next_chunk(BnRowCursor& cursor, int64_t end, BnChunk& chunk) {
#pragma unroll
  for (int i = 0; i < kBnChunk; ++i) {
    chunk.n[i] = cursor.n;
    chunk.s[i] = cursor.s;
    chunk.valid[i] = cursor.r < end;
    cursor.advance();
  }
}

// BN-add-ReLU's residual (read where the mask is computed) and its gradient (written by the
// backward): nullptr where absent, then the geometry is never read.
template <typename scalar_t>
struct BnResidual {
  const scalar_t* data;
  ChannelGeometry geometry;
  scalar_t* grad;  // the backward's d residual, or nullptr when not asked for
  ChannelGeometry grad_geometry;
};

// z of the chunk's element i: x * scale + shift, plus the residual's element with kResidual.
template <bool kResidual, typename acc_t>
__device__ __forceinline__ acc_t bn_z(acc_t x, acc_t scale, acc_t shift, const acc_t (&r)[kBnChunk], int i) {
  if constexpr (kResidual) {
    return bn_add_affine(x, scale, shift, r[i]);
  } else {
    return bn_affine(x, scale, shift);
  }
}

// The range of r of split blockIdx.y: [begin, end).
__device__ __forceinline__ int64_t bn_range_begin(int64_t chunk) { return static_cast<int64_t>(blockIdx.y) * chunk; }
__device__ __forceinline__ int64_t bn_range_end(int64_t chunk, int64_t r_count) {
  const int64_t end = bn_range_begin(chunk) + chunk;
  return end < r_count ? end : r_count;
}

template <typename acc_t>
struct BnGradSums {
  acc_t dz, dz_xmu;
};

template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> bn_combine(const Moments<acc_t>& a, const Moments<acc_t>& b) {
  return combine_moments(a, b);
}

template <typename acc_t>
__device__ __forceinline__ BnGradSums<acc_t> bn_combine(const BnGradSums<acc_t>& a, const BnGradSums<acc_t>& b) {
  BnGradSums<acc_t> r;
  r.dz = a.dz + b.dz;
  r.dz_xmu = a.dz_xmu + b.dz_xmu;
  return r;
}

// Combines the blockDim.y values of each lane (threadIdx.x) in a fixed tree; the result is valid
// in the threads of row 0. shared: blockDim.x * blockDim.y entries; blockDim.y a power of two.
// Ends with a barrier, so `shared` may be reused right away.
template <typename T>
__device__ T bn_block_combine(T value, T* shared) {
  const unsigned int lanes = blockDim.x, lane = threadIdx.x, row = threadIdx.y;
  shared[row * lanes + lane] = value;
  __syncthreads();
  for (unsigned int half = blockDim.y / 2; half > 0; half /= 2) {
    // Row `row` reads slot row + half (written one step earlier) and writes slot row < half:
    // no slot is read and written in the same step.
    if (row < half) {
      value = bn_combine(value, shared[(row + half) * lanes + lane]);
      shared[row * lanes + lane] = value;
    }
    __syncthreads();
  }
  return value;
}

// Moments of one chunk, two-pass over registers: as accurate as a two-pass computation however far
// the data lies from zero (unlike sum and sum of squares), and two divisions per chunk (here and in
// combine_moments) instead of one per value as in value-by-value Welford.
template <typename acc_t>
__device__ __forceinline__ Moments<acc_t> bn_chunk_moments(const acc_t (&v)[kBnChunk], const bool (&valid)[kBnChunk]) {
  acc_t sum = 0;
  int count = 0;
#pragma unroll
  for (int i = 0; i < kBnChunk; ++i) {
    if (valid[i]) {
      sum += v[i];
      ++count;
    }
  }
  Moments<acc_t> m;
  m.count = static_cast<acc_t>(count);
  m.mean = sum / m.count;
  m.m2 = 0;
#pragma unroll
  for (int i = 0; i < kBnChunk; ++i) {
    if (valid[i]) {
      const acc_t d = v[i] - m.mean;
      m.m2 += d * d;
    }
  }
  return m;
}

// Partials of the reductions: field f of split k for channel c at
// partial[(f * splits + k) * channels + c], so that a warp's lanes touch adjacent channels.
template <typename acc_t>
__device__ __forceinline__ void bn_store_partial(acc_t* partial, int64_t field_stride, int64_t slot,
                                                 const Moments<acc_t>& m) {
  partial[slot] = m.count;
  partial[field_stride + slot] = m.mean;
  partial[2 * field_stride + slot] = m.m2;
}

template <typename acc_t>
__device__ __forceinline__ void bn_load_partial(const acc_t* partial, int64_t field_stride, int64_t slot,
                                                Moments<acc_t>& m) {
  m.count = partial[slot];
  m.mean = partial[field_stride + slot];
  m.m2 = partial[2 * field_stride + slot];
}

template <typename acc_t>
__device__ __forceinline__ void bn_store_partial(acc_t* partial, int64_t field_stride, int64_t slot,
                                                 const BnGradSums<acc_t>& sums) {
  partial[slot] = sums.dz;
  partial[field_stride + slot] = sums.dz_xmu;
}

template <typename acc_t>
__device__ __forceinline__ void bn_load_partial(const acc_t* partial, int64_t field_stride, int64_t slot,
                                                BnGradSums<acc_t>& sums) {
  sums.dz = partial[slot];
  sums.dz_xmu = partial[field_stride + slot];
}

// The final per-channel values: (mean, biased variance) or (sum_dz, sum_dz_xmu).
template <typename acc_t>
__device__ __forceinline__ void bn_store_result(const Moments<acc_t>& m, acc_t* out0, acc_t* out1, int64_t c) {
  out0[c] = m.mean;
  out1[c] = m.m2 / m.count;
}

template <typename acc_t>
__device__ __forceinline__ void bn_store_result(const BnGradSums<acc_t>& sums, acc_t* out0, acc_t* out1, int64_t c) {
  out0[c] = sums.dz;
  out1[c] = sums.dz_xmu;
}

// The end of a reduction block: combine the rows, then row 0 writes its channel's result (one
// split) or its partial (several; bn_finalize_kernel combines them).
template <typename T, typename acc_t>
__device__ __forceinline__ void bn_reduce_epilogue(T value, T* shared, int64_t c, int64_t channels, acc_t* out0,
                                                   acc_t* out1, acc_t* partial) {
  value = bn_block_combine(value, shared);
  if (threadIdx.y == 0 && c < channels) {
    if (gridDim.y == 1) {
      bn_store_result(value, out0, out1, c);
    } else {
      bn_store_partial(partial, static_cast<int64_t>(gridDim.y) * channels,
                       static_cast<int64_t>(blockIdx.y) * channels + c, value);
    }
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBnThreads)
    batch_norm_stats_kernel(const scalar_t* __restrict__ x, ChannelGeometry g, acc_type<scalar_t>* __restrict__ mean,
                            acc_type<scalar_t>* __restrict__ var, acc_type<scalar_t>* __restrict__ partial,
                            int64_t tiles, int64_t chunk) {
  using acc_t = acc_type<scalar_t>;
  __shared__ Moments<acc_t> shared[kBnThreads];
  const int64_t r_count = g.per_channel();
  const int64_t begin = bn_range_begin(chunk), end = bn_range_end(chunk, r_count);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * blockDim.x + threadIdx.x;
    Moments<acc_t> m{};
    if (c < g.channels) {
      const scalar_t* xc = x + c * g.channel_stride;
      for (BnRowCursor cursor(begin + threadIdx.y, blockDim.y, g.spatial); cursor.r < end;) {
        BnChunk p;
        bn_next_chunk(cursor, end, p);
        acc_t v[kBnChunk];
        bn_load_chunk(xc, g, p, v);
        m = combine_moments(m, bn_chunk_moments(v, p.valid));
      }
    }
    bn_reduce_epilogue(m, shared, c, g.channels, mean, var, partial);
  }
}

template <bool kResidual, typename scalar_t>
__global__ void __launch_bounds__(kBnThreads) bn_relu_backward_reduce_kernel(
    const scalar_t* __restrict__ grad, ChannelGeometry gg, const scalar_t* __restrict__ x, ChannelGeometry xg,
    BnResidual<scalar_t> residual, const acc_type<scalar_t>* __restrict__ mean,
    const acc_type<scalar_t>* __restrict__ scale, const acc_type<scalar_t>* __restrict__ shift,
    acc_type<scalar_t>* __restrict__ sum_dz, acc_type<scalar_t>* __restrict__ sum_dz_xmu,
    acc_type<scalar_t>* __restrict__ partial, int64_t tiles, int64_t chunk) {
  using acc_t = acc_type<scalar_t>;
  __shared__ BnGradSums<acc_t> shared[kBnThreads];
  const int64_t r_count = xg.per_channel();
  const int64_t begin = bn_range_begin(chunk), end = bn_range_end(chunk, r_count);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * blockDim.x + threadIdx.x;
    BnGradSums<acc_t> sums{};
    if (c < xg.channels) {
      const acc_t mu = mean[c], sc = scale[c], sh = shift[c];
      const scalar_t* gc = grad + c * gg.channel_stride;
      const scalar_t* xc = x + c * xg.channel_stride;
      const scalar_t* rc = kResidual ? residual.data + c * residual.geometry.channel_stride : nullptr;
      for (BnRowCursor cursor(begin + threadIdx.y, blockDim.y, xg.spatial); cursor.r < end;) {
        BnChunk p;
        bn_next_chunk(cursor, end, p);
        acc_t gv[kBnChunk], xv[kBnChunk], rv[kBnChunk];
        bn_load_chunk(gc, gg, p, gv);
        bn_load_chunk(xc, xg, p, xv);
        if constexpr (kResidual) bn_load_chunk(rc, residual.geometry, p, rv);
#pragma unroll
        for (int i = 0; i < kBnChunk; ++i) {
          if (p.valid[i]) {
            const acc_t dz = relu_masked_grad(gv[i], bn_z<kResidual>(xv[i], sc, sh, rv, i));
            sums.dz += dz;
            sums.dz_xmu += dz * (xv[i] - mu);
          }
        }
      }
    }
    bn_reduce_epilogue(sums, shared, c, xg.channels, sum_dz, sum_dz_xmu, partial);
  }
}

// Combines the `splits` partials of each channel: block (kBnFinalizeLanes, rows), lanes along
// channels (coalesced reads), each row sums the splits row, row + rows, ... in order, then the
// rows combine in bn_block_combine's fixed tree.
constexpr int kBnFinalizeLanes = 32;

template <typename T, typename acc_t>
__global__ void __launch_bounds__(kBnThreads)
    bn_finalize_kernel(const acc_t* __restrict__ partial, int64_t splits, int64_t channels, int64_t tiles,
                       acc_t* __restrict__ out0, acc_t* __restrict__ out1) {
  __shared__ T shared[kBnThreads];
  const int64_t field_stride = splits * channels;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * blockDim.x + threadIdx.x;
    T value{};
    if (c < channels) {
      for (int64_t k = threadIdx.y; k < splits; k += blockDim.y) {
        T part;
        bn_load_partial(partial, field_stride, k * channels + c, part);
        value = bn_combine(value, part);
      }
    }
    value = bn_block_combine(value, shared);
    if (threadIdx.y == 0 && c < channels) bn_store_result(value, out0, out1, c);
  }
}

template <typename T, typename acc_t>
cudaError_t launch_bn_finalize(const acc_t* partial, int64_t splits, int64_t channels, acc_t* out0, acc_t* out1,
                               cudaStream_t stream) {
  const int64_t tiles = bn_ceil_div(channels, kBnFinalizeLanes);
  const dim3 grid(static_cast<unsigned int>(tiles < kBnMaxGrid ? tiles : kBnMaxGrid));
  const dim3 block(kBnFinalizeLanes, kBnThreads / kBnFinalizeLanes);
  bn_finalize_kernel<T, acc_t><<<grid, block, 0, stream>>>(partial, splits, channels, tiles, out0, out1);
  return cudaGetLastError();
}

template <bool kResidual, typename scalar_t>
__global__ void __launch_bounds__(kBnThreads)
    bn_relu_kernel(const scalar_t* __restrict__ x, ChannelGeometry xg, BnResidual<scalar_t> residual,
                   const acc_type<scalar_t>* __restrict__ scale, const acc_type<scalar_t>* __restrict__ shift,
                   scalar_t* __restrict__ y, ChannelGeometry yg, int64_t tiles, int64_t chunk) {
  using acc_t = acc_type<scalar_t>;
  const int64_t r_count = xg.per_channel();
  const int64_t begin = bn_range_begin(chunk), end = bn_range_end(chunk, r_count);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * blockDim.x + threadIdx.x;
    if (c >= xg.channels) continue;  // no barrier in this kernel
    const acc_t sc = scale[c], sh = shift[c];
    const scalar_t* xc = x + c * xg.channel_stride;
    const scalar_t* rc = kResidual ? residual.data + c * residual.geometry.channel_stride : nullptr;
    scalar_t* yc = y + c * yg.channel_stride;
    for (BnRowCursor cursor(begin + threadIdx.y, blockDim.y, xg.spatial); cursor.r < end;) {
      BnChunk p;
      bn_next_chunk(cursor, end, p);
      acc_t xv[kBnChunk], rv[kBnChunk];
      bn_load_chunk(xc, xg, p, xv);
      if constexpr (kResidual) bn_load_chunk(rc, residual.geometry, p, rv);
#pragma unroll
      for (int i = 0; i < kBnChunk; ++i) {
        if (p.valid[i]) {
          yc[p.offset(i, yg)] = static_cast<scalar_t>(relu_value(bn_z<kResidual>(xv[i], sc, sh, rv, i)));
        }
      }
    }
  }
}

template <bool kResidual, typename scalar_t>
__global__ void __launch_bounds__(kBnThreads) bn_relu_backward_kernel(
    const scalar_t* __restrict__ grad, ChannelGeometry gg, const scalar_t* __restrict__ x, ChannelGeometry xg,
    BnResidual<scalar_t> residual, const acc_type<scalar_t>* __restrict__ scale,
    const acc_type<scalar_t>* __restrict__ shift, const acc_type<scalar_t>* __restrict__ coef_x,
    const acc_type<scalar_t>* __restrict__ coef_c,
    scalar_t* __restrict__ dx, ChannelGeometry dxg, int64_t tiles, int64_t chunk) {
  using acc_t = acc_type<scalar_t>;
  const int64_t r_count = xg.per_channel();
  const int64_t begin = bn_range_begin(chunk), end = bn_range_end(chunk, r_count);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t c = tile * blockDim.x + threadIdx.x;
    if (c >= xg.channels) continue;  // no barrier in this kernel
    const acc_t sc = scale[c], sh = shift[c], cx = coef_x[c], cc = coef_c[c];
    const scalar_t* gc = grad + c * gg.channel_stride;
    const scalar_t* xc = x + c * xg.channel_stride;
    scalar_t* dxc = dx + c * dxg.channel_stride;
    const scalar_t* rc = kResidual ? residual.data + c * residual.geometry.channel_stride : nullptr;
    scalar_t* drc = kResidual && residual.grad != nullptr ? residual.grad + c * residual.grad_geometry.channel_stride
                                                          : nullptr;
    for (BnRowCursor cursor(begin + threadIdx.y, blockDim.y, xg.spatial); cursor.r < end;) {
      BnChunk p;
      bn_next_chunk(cursor, end, p);
      acc_t gv[kBnChunk], xv[kBnChunk], rv[kBnChunk];
      bn_load_chunk(gc, gg, p, gv);
      bn_load_chunk(xc, xg, p, xv);
      if constexpr (kResidual) bn_load_chunk(rc, residual.geometry, p, rv);
#pragma unroll
      for (int i = 0; i < kBnChunk; ++i) {
        if (p.valid[i]) {
          const acc_t dz = relu_masked_grad(gv[i], bn_z<kResidual>(xv[i], sc, sh, rv, i));
          dxc[p.offset(i, dxg)] = static_cast<scalar_t>(dz * sc + statistics_term(xv[i], cx) + cc);
          if (kResidual && drc != nullptr) drc[p.offset(i, residual.grad_geometry)] = static_cast<scalar_t>(dz);
        }
      }
    }
  }
}

}  // namespace detail

// Accumulators (acc_t) that launch_batch_norm_stats needs as `workspace`; 0 when the launch has a
// single split per channel (nullptr is then fine).
template <typename acc_t>
int64_t batch_norm_stats_workspace_elements(ChannelGeometry g) {
  if (detail::bn_empty(g)) return 0;
  const detail::BnWalk w = detail::bn_walk(g, true);
  return w.splits > 1 ? 3 * w.splits * g.channels : 0;
}

// The same for launch_bn_relu_backward_reduce, given the geometry of x (its walk follows x's layout).
template <typename acc_t>
int64_t bn_relu_backward_reduce_workspace_elements(ChannelGeometry xg) {
  if (detail::bn_empty(xg)) return 0;
  const detail::BnWalk w = detail::bn_walk(xg, true);
  return w.splits > 1 ? 2 * w.splits * xg.channels : 0;
}

// Per channel c: mean[c] and the biased var[c] of the g.batch * g.spatial values of x.
// workspace: batch_norm_stats_workspace_elements<acc_t>(g) accumulators, or nullptr when that is 0.
template <typename scalar_t>
cudaError_t launch_batch_norm_stats(const scalar_t* x, ChannelGeometry g, acc_type<scalar_t>* mean,
                                    acc_type<scalar_t>* var, acc_type<scalar_t>* workspace, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  if (detail::bn_empty(g)) return cudaSuccess;
  const detail::BnWalk w = detail::bn_walk(g, true);
  if (w.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  detail::batch_norm_stats_kernel<scalar_t>
      <<<w.grid(), w.block(), 0, stream>>>(x, g, mean, var, workspace, w.tiles, w.chunk);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess || w.splits == 1) return error;
  return detail::launch_bn_finalize<Moments<acc_t>, acc_t>(workspace, w.splits, g.channels, mean, var, stream);
}

// y = relu(x * scale[c] + shift[c] + residual); x, residual and y of the same [N, C, S] shape, any
// strides; residual == nullptr: none (BN-ReLU).
template <typename scalar_t>
cudaError_t launch_bn_add_relu(const scalar_t* x, ChannelGeometry xg, const scalar_t* residual, ChannelGeometry rg,
                               const acc_type<scalar_t>* scale, const acc_type<scalar_t>* shift, scalar_t* y,
                               ChannelGeometry yg, cudaStream_t stream) {
  if (!detail::bn_same_shape(xg, yg) || (residual != nullptr && !detail::bn_same_shape(xg, rg))) {
    return cudaErrorInvalidValue;
  }
  if (detail::bn_empty(xg)) return cudaSuccess;
  const detail::BnWalk w = detail::bn_walk(xg, false);
  const detail::BnResidual<scalar_t> r{residual, rg, nullptr, rg};
  if (residual != nullptr) {
    detail::bn_relu_kernel<true, scalar_t>
        <<<w.grid(), w.block(), 0, stream>>>(x, xg, r, scale, shift, y, yg, w.tiles, w.chunk);
  } else {
    detail::bn_relu_kernel<false, scalar_t>
        <<<w.grid(), w.block(), 0, stream>>>(x, xg, r, scale, shift, y, yg, w.tiles, w.chunk);
  }
  return cudaGetLastError();
}

// y = relu(x * scale[c] + shift[c]); x and y of the same [N, C, S] shape, any strides.
template <typename scalar_t>
cudaError_t launch_bn_relu(const scalar_t* x, ChannelGeometry xg, const acc_type<scalar_t>* scale,
                           const acc_type<scalar_t>* shift, scalar_t* y, ChannelGeometry yg, cudaStream_t stream) {
  return launch_bn_add_relu<scalar_t>(x, xg, nullptr, xg, scale, shift, y, yg, stream);
}

// With dz = relu_masked_grad(grad, x * scale[c] + shift[c] [+ residual]): sum_dz[c] = sum of dz,
// sum_dz_xmu[c] = sum of dz * (x - mean[c]); residual == nullptr: none. workspace:
// bn_relu_backward_reduce_workspace_elements<acc_t>(xg) accumulators, or nullptr when that is 0.
template <typename scalar_t>
cudaError_t launch_bn_add_relu_backward_reduce(const scalar_t* grad, ChannelGeometry gg, const scalar_t* x,
                                               ChannelGeometry xg, const scalar_t* residual, ChannelGeometry rg,
                                               const acc_type<scalar_t>* mean, const acc_type<scalar_t>* scale,
                                               const acc_type<scalar_t>* shift, acc_type<scalar_t>* sum_dz,
                                               acc_type<scalar_t>* sum_dz_xmu, acc_type<scalar_t>* workspace,
                                               cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  if (!detail::bn_same_shape(gg, xg) || (residual != nullptr && !detail::bn_same_shape(xg, rg))) {
    return cudaErrorInvalidValue;
  }
  if (detail::bn_empty(xg)) return cudaSuccess;
  const detail::BnWalk w = detail::bn_walk(xg, true);
  if (w.splits > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const detail::BnResidual<scalar_t> r{residual, rg, nullptr, rg};
  if (residual != nullptr) {
    detail::bn_relu_backward_reduce_kernel<true, scalar_t><<<w.grid(), w.block(), 0, stream>>>(
        grad, gg, x, xg, r, mean, scale, shift, sum_dz, sum_dz_xmu, workspace, w.tiles, w.chunk);
  } else {
    detail::bn_relu_backward_reduce_kernel<false, scalar_t><<<w.grid(), w.block(), 0, stream>>>(
        grad, gg, x, xg, r, mean, scale, shift, sum_dz, sum_dz_xmu, workspace, w.tiles, w.chunk);
  }
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess || w.splits == 1) return error;
  return detail::launch_bn_finalize<detail::BnGradSums<acc_t>, acc_t>(workspace, w.splits, xg.channels, sum_dz,
                                                                       sum_dz_xmu, stream);
}

template <typename scalar_t>
cudaError_t launch_bn_relu_backward_reduce(const scalar_t* grad, ChannelGeometry gg, const scalar_t* x,
                                           ChannelGeometry xg, const acc_type<scalar_t>* mean,
                                           const acc_type<scalar_t>* scale, const acc_type<scalar_t>* shift,
                                           acc_type<scalar_t>* sum_dz, acc_type<scalar_t>* sum_dz_xmu,
                                           acc_type<scalar_t>* workspace, cudaStream_t stream) {
  return launch_bn_add_relu_backward_reduce<scalar_t>(grad, gg, x, xg, nullptr, xg, mean, scale, shift, sum_dz,
                                                      sum_dz_xmu, workspace, stream);
}

// dz = relu_masked_grad(grad, x * scale[c] + shift[c] [+ residual]),
// dx = dz * scale[c] + x * coef_x[c] + coef_c[c], and d residual = dz where grad_residual is given.
// residual == nullptr: none (then grad_residual must be nullptr too).
template <typename scalar_t>
cudaError_t launch_bn_add_relu_backward(const scalar_t* grad, ChannelGeometry gg, const scalar_t* x,
                                        ChannelGeometry xg, const scalar_t* residual, ChannelGeometry rg,
                                        const acc_type<scalar_t>* scale, const acc_type<scalar_t>* shift,
                                        const acc_type<scalar_t>* coef_x, const acc_type<scalar_t>* coef_c,
                                        scalar_t* dx, ChannelGeometry dxg, scalar_t* grad_residual,
                                        ChannelGeometry drg, cudaStream_t stream) {
  if (!detail::bn_same_shape(gg, xg) || !detail::bn_same_shape(xg, dxg) ||
      (residual != nullptr && !detail::bn_same_shape(xg, rg)) ||
      (grad_residual != nullptr && (residual == nullptr || !detail::bn_same_shape(xg, drg)))) {
    return cudaErrorInvalidValue;
  }
  if (detail::bn_empty(xg)) return cudaSuccess;
  const detail::BnWalk w = detail::bn_walk(xg, false);
  const detail::BnResidual<scalar_t> r{residual, rg, grad_residual, drg};
  if (residual != nullptr) {
    detail::bn_relu_backward_kernel<true, scalar_t><<<w.grid(), w.block(), 0, stream>>>(
        grad, gg, x, xg, r, scale, shift, coef_x, coef_c, dx, dxg, w.tiles, w.chunk);
  } else {
    detail::bn_relu_backward_kernel<false, scalar_t><<<w.grid(), w.block(), 0, stream>>>(
        grad, gg, x, xg, r, scale, shift, coef_x, coef_c, dx, dxg, w.tiles, w.chunk);
  }
  return cudaGetLastError();
}

// dx = relu_masked_grad(grad, x * scale[c] + shift[c]) * scale[c] + x * coef_x[c] + coef_c[c].
template <typename scalar_t>
cudaError_t launch_bn_relu_backward(const scalar_t* grad, ChannelGeometry gg, const scalar_t* x, ChannelGeometry xg,
                                    const acc_type<scalar_t>* scale, const acc_type<scalar_t>* shift,
                                    const acc_type<scalar_t>* coef_x, const acc_type<scalar_t>* coef_c,
                                    scalar_t* dx, ChannelGeometry dxg, cudaStream_t stream) {
  return launch_bn_add_relu_backward<scalar_t>(grad, gg, x, xg, nullptr, xg, scale, shift, coef_x, coef_c, dx, dxg,
                                               nullptr, dxg, stream);
}

}  // namespace cnnfast

// Explicit instantiation of every launcher for one scalar type (float, double, __half,
// __nv_bfloat16); used by tools/check_cuda_kernels.py. At global scope. (The workspace-size
// functions depend only on acc_t, shared by three scalar types, so they are left to implicit
// instantiation through the launchers.)
#define CNNFAST_INSTANTIATE_BATCH_NORM_KERNELS(scalar_t)                                                   \
  template cudaError_t cnnfast::launch_batch_norm_stats<scalar_t>(                                         \
      const scalar_t*, cnnfast::ChannelGeometry, cnnfast::acc_type<scalar_t>*, cnnfast::acc_type<scalar_t>*, \
      cnnfast::acc_type<scalar_t>*, cudaStream_t);                                                         \
  template cudaError_t cnnfast::launch_bn_relu<scalar_t>(                                                  \
      const scalar_t*, cnnfast::ChannelGeometry, const cnnfast::acc_type<scalar_t>*,                       \
      const cnnfast::acc_type<scalar_t>*, scalar_t*, cnnfast::ChannelGeometry, cudaStream_t);              \
  template cudaError_t cnnfast::launch_bn_relu_backward_reduce<scalar_t>(                                  \
      const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, cnnfast::ChannelGeometry,                \
      const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*,                              \
      const cnnfast::acc_type<scalar_t>*, cnnfast::acc_type<scalar_t>*, cnnfast::acc_type<scalar_t>*,      \
      cnnfast::acc_type<scalar_t>*, cudaStream_t);                                                         \
  template cudaError_t cnnfast::launch_bn_relu_backward<scalar_t>(                                         \
      const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, cnnfast::ChannelGeometry,                \
      const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*,                              \
      const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*, scalar_t*,                   \
      cnnfast::ChannelGeometry, cudaStream_t);                                                             \
  template cudaError_t cnnfast::launch_bn_add_relu<scalar_t>(                                              \
      const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, cnnfast::ChannelGeometry,                \
      const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*, scalar_t*,                   \
      cnnfast::ChannelGeometry, cudaStream_t);                                                             \
  template cudaError_t cnnfast::launch_bn_add_relu_backward_reduce<scalar_t>(                              \
      const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, \
      cnnfast::ChannelGeometry, const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*,    \
      const cnnfast::acc_type<scalar_t>*, cnnfast::acc_type<scalar_t>*, cnnfast::acc_type<scalar_t>*,      \
      cnnfast::acc_type<scalar_t>*, cudaStream_t);                                                         \
  template cudaError_t cnnfast::launch_bn_add_relu_backward<scalar_t>(                                     \
      const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, cnnfast::ChannelGeometry, const scalar_t*, \
      cnnfast::ChannelGeometry, const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*,    \
      const cnnfast::acc_type<scalar_t>*, const cnnfast::acc_type<scalar_t>*, scalar_t*,                   \
      cnnfast::ChannelGeometry, scalar_t*, cnnfast::ChannelGeometry, cudaStream_t)
