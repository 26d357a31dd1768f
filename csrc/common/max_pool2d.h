// 2-d max pooling, the math shared by every C++ kernel.
//
// Semantics are torch.nn.functional.max_pool2d's, to the element: windows are visited row by row,
// a value replaces the running maximum when it is greater or NaN (so the first of equal maxima
// wins, and the last NaN), padding never wins, and an all -inf window points at its first real
// element. The backward gathers, for each input element, the gradients of the windows whose
// argmax it is, in the order torch's kernels add them, so gradients match torch's bit for bit.
//
// What is kept for backward is the argmax as an offset inside its window, kh * kernel_w + kw:
// one byte per output for windows of up to 256 elements, instead of the input or int64 indices.
#pragma once

#include "host_device.h"

namespace cnnfast {

struct PoolGeometry {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t in_h, in_w, out_h, out_w;
};

// AlexNet's overlapping 3/2 window with no padding or dilation, as compile-time constants so the
// window loops unroll; everything else reads the runtime geometry.
struct Window3Stride2 {
  static constexpr bool fixed = true;
  CNNFAST_HOST_DEVICE static bool matches(const PoolGeometry& g) {
    return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 2 && g.stride_w == 2 &&
           g.pad_h == 0 && g.pad_w == 0 && g.dilation_h == 1 && g.dilation_w == 1;
  }
  CNNFAST_HOST_DEVICE static int64_t kernel_h(const PoolGeometry&) { return 3; }
  CNNFAST_HOST_DEVICE static int64_t kernel_w(const PoolGeometry&) { return 3; }
  CNNFAST_HOST_DEVICE static int64_t stride_h(const PoolGeometry&) { return 2; }
  CNNFAST_HOST_DEVICE static int64_t stride_w(const PoolGeometry&) { return 2; }
  CNNFAST_HOST_DEVICE static int64_t pad_h(const PoolGeometry&) { return 0; }
  CNNFAST_HOST_DEVICE static int64_t pad_w(const PoolGeometry&) { return 0; }
  CNNFAST_HOST_DEVICE static int64_t dilation_h(const PoolGeometry&) { return 1; }
  CNNFAST_HOST_DEVICE static int64_t dilation_w(const PoolGeometry&) { return 1; }
};

struct AnyWindow {
  static constexpr bool fixed = false;
  CNNFAST_HOST_DEVICE static int64_t kernel_h(const PoolGeometry& g) { return g.kernel_h; }
  CNNFAST_HOST_DEVICE static int64_t kernel_w(const PoolGeometry& g) { return g.kernel_w; }
  CNNFAST_HOST_DEVICE static int64_t stride_h(const PoolGeometry& g) { return g.stride_h; }
  CNNFAST_HOST_DEVICE static int64_t stride_w(const PoolGeometry& g) { return g.stride_w; }
  CNNFAST_HOST_DEVICE static int64_t pad_h(const PoolGeometry& g) { return g.pad_h; }
  CNNFAST_HOST_DEVICE static int64_t pad_w(const PoolGeometry& g) { return g.pad_w; }
  CNNFAST_HOST_DEVICE static int64_t dilation_h(const PoolGeometry& g) { return g.dilation_h; }
  CNNFAST_HOST_DEVICE static int64_t dilation_w(const PoolGeometry& g) { return g.dilation_w; }
};

// Host side: runs body(W{}) with W the 3/2 fast path when the geometry is AlexNet's, else the
// general window.
template <typename Body>
inline void dispatch_window(const PoolGeometry& g, const Body& body) {
  if (Window3Stride2::matches(g)) {
    body(Window3Stride2{});
  } else {
    body(AnyWindow{});
  }
}

template <typename acc_t>
CNNFAST_HOST_DEVICE bool max_pool_is_nan(acc_t v) {
  return v != v;
}

template <typename acc_t>
CNNFAST_HOST_DEVICE acc_t max_pool_negative_infinity() {
  return -acc_t(1) / acc_t(0);
}

// The input of a plain max-pool: `plane` points at (n, c, 0, 0); strides are in elements.
template <typename scalar_t>
struct StridedPlane {
  const scalar_t* plane;
  int64_t h_stride, w_stride;
  CNNFAST_HOST_DEVICE acc_type<scalar_t> operator()(int64_t ih, int64_t iw) const {
    return static_cast<acc_type<scalar_t>>(plane[ih * h_stride + iw * w_stride]);
  }
};

// One output element over the values `source(ih, iw)` (an acc_type<scalar_t>, exactly
// representable in scalar_t, so that comparisons and ties are those of the stored values): the
// plain input (StridedPlane), or values computed on the fly that are never written (the fused
// ReLU-LRN-max-pool). Writes the maximum and its window offset; returns the flat index
// ih * in_w + iw that return_indices reports.
template <typename W, typename Source, typename scalar_t, typename offset_t>
CNNFAST_HOST_DEVICE int64_t max_pool2d_window_over(const Source& source, const PoolGeometry& g, int64_t oh,
                                                   int64_t ow, scalar_t* out, offset_t* offset) {
  using acc_t = acc_type<scalar_t>;
  const int64_t h0 = oh * W::stride_h(g) - W::pad_h(g);
  const int64_t w0 = ow * W::stride_w(g) - W::pad_w(g);
  // Skip the padded rows/columns at the start, as torch does, so that an all -inf window
  // points at its first real element.
  int64_t kh_first = 0;
  while (h0 + kh_first * W::dilation_h(g) < 0) ++kh_first;
  int64_t kw_first = 0;
  while (w0 + kw_first * W::dilation_w(g) < 0) ++kw_first;
  acc_t best = max_pool_negative_infinity<acc_t>();
  int64_t best_kh = kh_first;
  int64_t best_kw = kw_first;
  for (int64_t kh = kh_first; kh < W::kernel_h(g); ++kh) {
    const int64_t ih = h0 + kh * W::dilation_h(g);
    if (ih >= g.in_h) break;
    for (int64_t kw = kw_first; kw < W::kernel_w(g); ++kw) {
      const int64_t iw = w0 + kw * W::dilation_w(g);
      if (iw >= g.in_w) break;
      const acc_t v = source(ih, iw);
      if (v > best || max_pool_is_nan(v)) {
        best = v;
        best_kh = kh;
        best_kw = kw;
      }
    }
  }
  *out = static_cast<scalar_t>(best);
  *offset = static_cast<offset_t>(best_kh * W::kernel_w(g) + best_kw);
  return (h0 + best_kh * W::dilation_h(g)) * g.in_w + (w0 + best_kw * W::dilation_w(g));
}

// One output element of the plain max-pool; h_stride / w_stride are in elements.
template <typename W, typename scalar_t, typename offset_t>
CNNFAST_HOST_DEVICE int64_t max_pool2d_window(const scalar_t* plane, int64_t h_stride, int64_t w_stride,
                                              const PoolGeometry& g, int64_t oh, int64_t ow,
                                              scalar_t* out, offset_t* offset) {
  return max_pool2d_window_over<W>(StridedPlane<scalar_t>{plane, h_stride, w_stride}, g, oh, ow, out, offset);
}

// Output rows (or columns) whose window covers input row `i`: [first, last], possibly empty.
CNNFAST_HOST_DEVICE void max_pool_covering(int64_t i, int64_t pad, int64_t kernel, int64_t stride,
                                           int64_t dilation, int64_t out_size, int64_t* first,
                                           int64_t* last) {
  const int64_t reach = i + pad - (kernel - 1) * dilation;  // o * stride >= reach
  int64_t lo = reach <= 0 ? 0 : (reach + stride - 1) / stride;
  int64_t hi = (i + pad) / stride;  // o * stride <= i + pad
  if (hi > out_size - 1) hi = out_size - 1;
  *first = lo;
  *last = hi;
}

// Gradient of one input element: the sum of the output gradients of the windows whose argmax it
// is, added in torch's order (output rows, then columns, ascending). `grad_plane` and
// `offset_plane` point at (n, c, 0, 0) of the output-shaped tensors.
template <typename W, typename scalar_t, typename offset_t>
CNNFAST_HOST_DEVICE acc_type<scalar_t> max_pool2d_input_grad(const scalar_t* grad_plane,
                                                             const offset_t* offset_plane,
                                                             int64_t h_stride, int64_t w_stride,
                                                             const PoolGeometry& g, int64_t ih,
                                                             int64_t iw) {
  using acc_t = acc_type<scalar_t>;
  int64_t oh_first, oh_last, ow_first, ow_last;
  max_pool_covering(ih, W::pad_h(g), W::kernel_h(g), W::stride_h(g), W::dilation_h(g), g.out_h,
                       &oh_first, &oh_last);
  max_pool_covering(iw, W::pad_w(g), W::kernel_w(g), W::stride_w(g), W::dilation_w(g), g.out_w,
                       &ow_first, &ow_last);
  acc_t sum = acc_t(0);
  for (int64_t oh = oh_first; oh <= oh_last; ++oh) {
    const int64_t dh = ih + W::pad_h(g) - oh * W::stride_h(g);
    if (dh % W::dilation_h(g) != 0) continue;
    const int64_t kh = dh / W::dilation_h(g);
    for (int64_t ow = ow_first; ow <= ow_last; ++ow) {
      const int64_t dw = iw + W::pad_w(g) - ow * W::stride_w(g);
      if (dw % W::dilation_w(g) != 0) continue;
      const int64_t kw = dw / W::dilation_w(g);
      const int64_t o = oh * h_stride + ow * w_stride;
      if (static_cast<int64_t>(offset_plane[o]) == kh * W::kernel_w(g) + kw) {
        sum += static_cast<acc_t>(grad_plane[o]);
      }
    }
  }
  return sum;
}

}  // namespace cnnfast
