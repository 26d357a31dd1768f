// The CPU's vectorised max-pool windows, shared by the max-pool op (csrc/cpu/max_pool2d.cpp) and
// the fused ReLU-LRN-max-pool (csrc/cpu/relu_lrn_max_pool2d.cpp). The math and the rule:
// csrc/common/max_pool2d.h.
#pragma once

#include <algorithm>
#include <limits>

#include "../op_helpers.h"

namespace cnnfast {
namespace cpu {

// Outputs [*first, *last) whose windows lie wholly inside [0, in) along one axis.
inline void interior(int64_t pad, int64_t kernel, int64_t stride, int64_t dilation, int64_t in, int64_t out,
                     int64_t* first, int64_t* last) {
  *first = std::min(out, (pad + stride - 1) / stride);
  const int64_t reach = in - 1 + pad - (kernel - 1) * dilation;  // o * stride <= reach
  *last = reach < 0 ? *first : std::max(*first, std::min(out, reach / stride + 1));
}

// The outputs whose windows pool_interior takes: those wholly inside the input, rows
// [*oh_first, *oh_last) by columns [*ow_first, *ow_last). None for a window of more elements than
// acc_t counts exactly (floats: 2^24), whose offsets max_pool2d_window keeps in integers.
template <typename W, typename acc_t>
void interior_windows(const PoolGeometry& g, int64_t* oh_first, int64_t* oh_last, int64_t* ow_first,
                      int64_t* ow_last) {
  interior(W::pad_h(g), W::kernel_h(g), W::stride_h(g), W::dilation_h(g), g.in_h, g.out_h, oh_first, oh_last);
  interior(W::pad_w(g), W::kernel_w(g), W::stride_w(g), W::dilation_w(g), g.in_w, g.out_w, ow_first, ow_last);
  if (W::kernel_h(g) * W::kernel_w(g) > (int64_t(1) << std::numeric_limits<acc_t>::digits)) *oh_last = *oh_first;
}

// One window element for `count` windows: the running maximum takes v when v is greater or NaN
// (max_pool2d_window's rule). The offset is kept in acc_t lanes (exact: interior_windows) so that the
// compare and both selects have one width; with kStep a constant (1: channels_last, 2: AlexNet's
// stride) the loop vectorises. kStep = 0 reads the step at run time.
template <int64_t kStep, typename scalar_t, typename acc_t>
void max_update(const scalar_t* __restrict__ element, int64_t step, int64_t count, acc_t* __restrict__ best,
                acc_t* __restrict__ best_k, acc_t k) {
  if (kStep != 0) step = kStep;
  for (int64_t i = 0; i < count; ++i) {
    const acc_t v = static_cast<acc_t>(element[i * step]);
    const acc_t b = best[i];
    const bool take = (v > b) | max_pool_is_nan(v);  // `|`, not `||`: no branch
    best[i] = take ? v : b;
    best_k[i] = take ? k : best_k[i];
  }
}

// `count` windows wholly inside the input, `step` elements apart, each window element
// `h_stride` / `w_stride` apart, visited in max_pool2d_window's order. `scratch` holds 2 * count
// accumulators.
template <typename W, typename scalar_t, typename offset_t>
void pool_interior(const scalar_t* first_window, int64_t count, int64_t step, int64_t h_stride, int64_t w_stride,
                   const PoolGeometry& g, scalar_t* out, offset_t* offset, acc_type<scalar_t>* scratch) {
  using acc_t = acc_type<scalar_t>;
  acc_t* best = scratch;
  acc_t* best_k = scratch + count;
  for (int64_t i = 0; i < count; ++i) {
    best[i] = max_pool_negative_infinity<acc_t>();
    best_k[i] = acc_t(0);
  }
  for (int64_t kh = 0; kh < W::kernel_h(g); ++kh) {
    for (int64_t kw = 0; kw < W::kernel_w(g); ++kw) {
      const scalar_t* element = first_window + kh * W::dilation_h(g) * h_stride + kw * W::dilation_w(g) * w_stride;
      const acc_t k = static_cast<acc_t>(kh * W::kernel_w(g) + kw);
      if (step == 1) {
        max_update<1>(element, step, count, best, best_k, k);
      } else if (step == 2) {
        max_update<2>(element, step, count, best, best_k, k);
      } else {
        max_update<0>(element, step, count, best, best_k, k);
      }
    }
  }
  for (int64_t i = 0; i < count; ++i) {
    out[i] = static_cast<scalar_t>(best[i]);
    offset[i] = static_cast<offset_t>(best_k[i]);
  }
}

}  // namespace cpu
}  // namespace cnnfast
