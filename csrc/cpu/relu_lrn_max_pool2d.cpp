// CPU kernels of the fused ReLU -> LRN -> max-pool (the math: csrc/common/relu_lrn_max_pool2d.h).
//
// Forward: one task per (image, output row). It computes relu -> LRN of the input rows that row's
// windows read into a local ring of rows (C * W values per row: a few KiB, in L1/L2), with the
// LRN's channel walk vectorised along the row, then takes each window's maximum from the ring.
// Neighbouring output rows share input rows when stride < kernel (3/2: one in three); a thread
// runs consecutive rows of an image, so it keeps those in the ring and computes each row once
// (only the first row of a thread's range may repeat one of another thread's).
//
// Backward: the max-pool op's backward scatters grad_output into a temporary of x's size (its own
// kernel, through the dispatcher), then the LRN backward walks it with relu(x) recomputed on load
// and the ReLU's mask applied to dx.
#include <ATen/core/dispatch/Dispatcher.h>

#include "../common/relu_lrn_max_pool2d.h"
#include "lrn_columns.h"

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
  const int64_t slots = (W::kernel_h(g) - 1) * W::dilation_h(g) + 1;  // a window's span of rows
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  at::parallel_for(0, batch * g.out_h, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> rows(slots * buffer_row);
    std::vector<int64_t> slot_row(slots, -1);  // the row (n * in_h + ih) each slot holds
    std::vector<acc_t> window_sum(g.in_w);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.out_h, oh = task % g.out_h;
      const scalar_t* image = x_data + n * image_size;
      int64_t first, last;
      relu_lrn_max_pool_rows<W>(g, oh, &first, &last);
      for (int64_t ih = first; ih <= last && ih < g.in_h; ih += W::dilation_h(g)) {
        if (slot_row[ih % slots] == n * g.in_h + ih) continue;
        slot_row[ih % slots] = n * g.in_h + ih;
        lrn_forward_columns_to<Power, scalar_t, acc_t, LoadRelu>(image + ih * row_stride,
                                                                 rows.data() + (ih % slots) * buffer_row,
                                                                 buffer_channel, buffer_w, g.in_w, p,
                                                                 window_sum.data());
      }
      RowBuffer<scalar_t> source{rows.data(), slots, buffer_row, buffer_channel, buffer_w, 0};
      for (int64_t c = 0; c < channels; ++c) {
        source.channel = c;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t o = channels_last ? ((n * g.out_h + oh) * g.out_w + ow) * channels + c
                                          : ((n * channels + c) * g.out_h + oh) * g.out_w + ow;
          max_pool2d_window_over<W>(source, g, oh, ow, out + o, offsets + o);
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
