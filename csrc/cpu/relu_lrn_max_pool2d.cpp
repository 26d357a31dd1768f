// CPU kernels of the fused ReLU -> LRN -> max-pool (the math: csrc/common/relu_lrn_max_pool2d.h).
//
// Forward: one task per (image, output row). It computes relu -> LRN of the input rows that row's
// windows read into a local buffer (C * W values per row: a few KiB, in L1/L2), with the LRN's
// channel walk vectorised along the row, then takes the windows' maxima from the buffer with the
// max-pool op's vectorised interior windows (csrc/cpu/max_pool2d_windows.h) and its rule at the
// borders. Neighbouring output rows share input rows when stride < kernel (3/2: one in three); a
// thread runs consecutive rows of an image, so it shifts the shared rows down the buffer instead
// of computing them again.
//
// Backward: the max-pool op's backward scatters grad_output into a temporary of x's size (its own
// kernel, through the dispatcher), then the LRN backward walks it with relu(x) recomputed on load
// and the ReLU's mask applied to dx.
#include <ATen/core/dispatch/Dispatcher.h>

#include "../common/relu_lrn_max_pool2d.h"
#include "lrn_columns.h"
#include "max_pool2d_windows.h"

namespace cnnfast {
namespace {

// The (image, output row) tasks of the forward for one dtype, Power, offset type and window.
template <typename Power, typename W, typename scalar_t, typename offset_t>
void forward_rows(const at::Tensor& x, scalar_t* out, offset_t* offsets, const PoolGeometry& g,
                  const LrnParams<acc_type<scalar_t>>& p, bool channels_last) {
  using acc_t = acc_type<scalar_t>;
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t image_size = channels * g.in_h * g.in_w;
  // Strides of one input row, and of the buffer's rows, channels and columns (x's layout).
  const int64_t row_stride = channels_last ? g.in_w * channels : g.in_w;
  const int64_t buffer_row = channels * g.in_w;
  const int64_t buffer_channel = channels_last ? 1 : g.in_w;
  const int64_t buffer_w = channels_last ? channels : 1;
  // The buffer's row r is input row h0 + r: a window spans `span` rows.
  const int64_t span = (W::kernel_h(g) - 1) * W::dilation_h(g) + 1;
  int64_t oh_first, oh_last, ow_first, ow_last;
  cpu::interior_windows<W, acc_type<scalar_t>>(g, &oh_first, &oh_last, &ow_first, &ow_last);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  at::parallel_for(0, batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> rows(span * buffer_row);
    std::vector<char> held(span, 0);  // whether buffer row r holds input row h0 + r
    std::vector<acc_t> window_sum(g.in_w);
    std::vector<acc_t> best(2 * std::max(channels, g.out_w));
    int64_t held_n = -1, held_h0 = 0;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h, oh = task % g.out_h;
      const int64_t h0 = oh * W::stride_h(g) - W::pad_h(g);
      const int64_t shift = n == held_n ? h0 - held_h0 : span;
      if (shift > 0 && shift < span) {  // the rows this output row shares with the previous one
        std::copy(rows.begin() + shift * buffer_row, rows.end(), rows.begin());
        std::copy(held.begin() + shift, held.end(), held.begin());
        std::fill(held.end() - shift, held.end(), 0);
      } else if (shift != 0) {
        std::fill(held.begin(), held.end(), 0);
      }
      held_n = n;
      held_h0 = h0;
      const scalar_t* image = x_data + n * image_size;
      for (int64_t r = 0; r < span; r += W::dilation_h(g)) {
        const int64_t ih = h0 + r;
        if (ih < 0 || ih >= g.in_h || held[r]) continue;
        lrn_forward_columns_to<Power, scalar_t, acc_t, LoadRelu>(image + ih * row_stride, rows.data() + r * buffer_row,
                                                                 buffer_channel, buffer_w, g.in_w, p,
                                                                 window_sum.data());
        held[r] = 1;
      }
      const bool inside_h = oh >= oh_first && oh < oh_last;
      const int64_t lo = inside_h ? ow_first : g.out_w, hi = inside_h ? ow_last : g.out_w;
      RowBuffer<scalar_t> border{rows.data(), h0, buffer_row, buffer_channel, buffer_w, 0};
      if (!channels_last) {
        for (int64_t c = 0; c < channels; ++c) {
          const int64_t row = ((n * channels + c) * g.out_h + oh) * g.out_w;
          border.channel = c;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            if (ow == lo && hi > lo) {
              const scalar_t* window = rows.data() + c * buffer_channel + (lo * W::stride_w(g) - W::pad_w(g));
              cpu::pool_interior<W>(window, hi - lo, W::stride_w(g), buffer_row, 1, g, out + row + lo,
                                    offsets + row + lo, best.data());
              ow = hi - 1;
              continue;
            }
            max_pool2d_window_over<W>(border, g, oh, ow, out + row + ow, offsets + row + ow);
          }
        }
      } else {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t pixel = ((n * g.out_h + oh) * g.out_w + ow) * channels;
          if (ow >= lo && ow < hi) {
            const scalar_t* window = rows.data() + (ow * W::stride_w(g) - W::pad_w(g)) * channels;
            cpu::pool_interior<W>(window, channels, 1, buffer_row, channels, g, out + pixel, offsets + pixel,
                                  best.data());
            continue;
          }
          for (int64_t c = 0; c < channels; ++c) {
            border.channel = c;
            max_pool2d_window_over<W>(border, g, oh, ow, out + pixel + c, offsets + pixel + c);
          }
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_forward_kernel(
    const at::Tensor& input, int64_t size, double alpha, double beta, double k, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 4, "cnnfast.relu_lrn_max_pool2d: input must be 4-d");
  const MaxPoolCall call = prepare_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor &x = call.x, &out = call.output, &offsets = call.offsets;
  const PoolGeometry& g = call.g;
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relu_lrn_max_pool2d_cpu", [&] {
      const auto p = lrn_params<acc_type<scalar_t>>(x, size, alpha, beta, k);
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      dispatch_offset(offsets.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        offset_t* offset_data = offsets.mutable_data_ptr<offset_t>();
        lrn_dispatch_power(p.beta, [&](auto power) {
          dispatch_window(g, [&](auto window) {
            forward_rows<decltype(power), decltype(window)>(x, out_data, offset_data, g, p, call.channels_last);
          });
        });
      });
    });
  }
  return {out, offsets};
}

// torch's order of adding overlapping windows lives in the max-pool op's backward: call it.
at::Tensor max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& offsets, const at::Tensor& input,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("cnnfast::_max_pool2d_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef,
                                               at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef)>();
  return op.call(grad_output, offsets, input.sym_sizes().slice(2), kernel_size, stride, padding, dilation);
}

at::Tensor relu_lrn_max_pool2d_backward_kernel(const at::Tensor& grad_output, const at::Tensor& offsets,
                                               const at::Tensor& input, int64_t size, double alpha, double beta,
                                               double k, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4 && offsets.dim() == 4 && offsets.size(0) == input.size(0) &&
                  offsets.size(1) == input.size(1),
              "cnnfast.relu_lrn_max_pool2d backward: offsets must be the 4-d output of this input");
  // The gradient of the LRN output: the one temporary of x's size.
  const at::Tensor grad_lrn = max_pool2d_backward(grad_output, offsets, input, kernel_size, stride, padding, dilation);
  // dx in x's own layout, as torch's ReLU backward (elementwise) gives it and a plain LRN keeps it;
  // grad_lrn, in the max-pool's layout, is copied to it only where the two differ.
  const LrnCall call = prepare_local_response_norm(input, &grad_lrn);
  cpu::lrn_backward<LoadRelu>(call.grad_output, call.x, call.result, size, alpha, beta, k);
  return call.result;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("relu_lrn_max_pool2d", &relu_lrn_max_pool2d_forward_kernel);
  m.impl("_relu_lrn_max_pool2d_backward", &relu_lrn_max_pool2d_backward_kernel);
}

}  // namespace cnnfast
