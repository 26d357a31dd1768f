// CPU kernels of 2-d max pooling (the math: csrc/common/max_pool2d.h).
//
// Windows that lie wholly inside the input are computed a row (contiguous layout) or a pixel's
// channels (channels_last) at a time, visiting the window's elements in the outer loops and the
// outputs in the inner one, which vectorises; the running maximum follows the same rule in the
// same order as max_pool2d_window, which handles the windows that touch the padding. The
// backward scatters each output gradient to its argmax in output order, plane by plane (or image
// by image): the same additions in the same order as torch's kernel and as the CUDA gather.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "max_pool2d_windows.h"

namespace cnnfast {
namespace {

template <typename W, typename scalar_t, typename offset_t>
void forward_contiguous(const scalar_t* x, scalar_t* out, offset_t* offsets, int64_t planes, const PoolGeometry& g) {
  int64_t oh_first, oh_last, ow_first, ow_last;
  cpu::interior_windows<W, acc_type<scalar_t>>(g, &oh_first, &oh_last, &ow_first, &ow_last);
  at::parallel_for(0, planes, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_type<scalar_t>> best(2 * g.out_w);
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* image = x + plane * g.in_h * g.in_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t row = (plane * g.out_h + oh) * g.out_w;
        const bool inside = oh >= oh_first && oh < oh_last;
        const int64_t lo = inside ? ow_first : g.out_w, hi = inside ? ow_last : g.out_w;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          if (ow == lo && hi > lo) {  // an empty interior (hi == lo) would send ow back to lo - 1 forever
            const scalar_t* window = image + (oh * W::stride_h(g) - W::pad_h(g)) * g.in_w +
                                     (lo * W::stride_w(g) - W::pad_w(g));
            cpu::pool_interior<W>(window, hi - lo, W::stride_w(g), g.in_w, 1, g, out + row + lo, offsets + row + lo,
                             best.data());
            ow = hi - 1;
            continue;
          }
          max_pool2d_window<W>(image, g.in_w, 1, g, oh, ow, out + row + ow, offsets + row + ow);
        }
      }
    }
  });
}

template <typename W, typename scalar_t, typename offset_t>
void forward_channels_last(const scalar_t* x, scalar_t* out, offset_t* offsets, int64_t batch, int64_t channels,
                           const PoolGeometry& g) {
  int64_t oh_first, oh_last, ow_first, ow_last;
  cpu::interior_windows<W, acc_type<scalar_t>>(g, &oh_first, &oh_last, &ow_first, &ow_last);
  const int64_t out_plane = g.out_h * g.out_w;
  at::parallel_for(0, batch * out_plane, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_type<scalar_t>> best(2 * channels);
    for (int64_t position = begin; position < end; ++position) {
      const int64_t n = position / out_plane, oh = (position % out_plane) / g.out_w, ow = position % g.out_w;
      const scalar_t* image = x + n * g.in_h * g.in_w * channels;
      scalar_t* out_pixel = out + position * channels;
      offset_t* offset_pixel = offsets + position * channels;
      if (oh >= oh_first && oh < oh_last && ow >= ow_first && ow < ow_last) {
        const scalar_t* window = image + ((oh * W::stride_h(g) - W::pad_h(g)) * g.in_w +
                                          (ow * W::stride_w(g) - W::pad_w(g))) * channels;
        cpu::pool_interior<W>(window, channels, 1, g.in_w * channels, channels, g, out_pixel, offset_pixel, best.data());
        continue;
      }
      for (int64_t c = 0; c < channels; ++c) {
        max_pool2d_window<W>(image + c, g.in_w * channels, channels, g, oh, ow, out_pixel + c, offset_pixel + c);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_kernel(const at::Tensor& input,
                                                             at::IntArrayRef kernel_size,
                                                             at::IntArrayRef stride,
                                                             at::IntArrayRef padding,
                                                             at::IntArrayRef dilation, bool ceil_mode) {
  const MaxPoolCall call = prepare_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor &x = call.x, &out = call.output, &offsets = call.offsets;
  const PoolGeometry& g = call.g;
  const int64_t batch = call.batch, channels = call.channels;
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cpu", [&] {
      const scalar_t* x_data = x.const_data_ptr<scalar_t>();
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      dispatch_offset(offsets.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        offset_t* offset_data = offsets.mutable_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          if (call.channels_last) {
            forward_channels_last<W>(x_data, out_data, offset_data, batch, channels, g);
          } else {
            forward_contiguous<W>(x_data, out_data, offset_data, batch * channels, g);
          }
        });
      });
    });
  }
  return {call.shaped(out), call.shaped(offsets)};
}

// Adds each output gradient of one image (or plane) to its argmax, in output order.
// `channels` is 1 for a contiguous plane; for channels_last the channels are innermost.
template <typename W, typename scalar_t, typename offset_t>
void scatter_image(const scalar_t* dy, const offset_t* offsets, const PoolGeometry& g, int64_t channels,
                   acc_type<scalar_t>* sum) {
  const int64_t window = W::kernel_h(g) * W::kernel_w(g);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t h0 = oh * W::stride_h(g) - W::pad_h(g);
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const int64_t w0 = ow * W::stride_w(g) - W::pad_w(g);
      const int64_t o = (oh * g.out_w + ow) * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t k = static_cast<int64_t>(offsets[o + c]);
        const int64_t ih = h0 + (k / W::kernel_w(g)) * W::dilation_h(g);
        const int64_t iw = w0 + (k % W::kernel_w(g)) * W::dilation_w(g);
        // Offsets from the forward always point inside; others (a direct call with made-up
        // offsets) add nothing, as in the CUDA gather, rather than write out of bounds.
        if (k < 0 || k >= window || ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
        sum[(ih * g.in_w + iw) * channels + c] += static_cast<acc_type<scalar_t>>(dy[o + c]);
      }
    }
  }
}

at::Tensor max_pool2d_backward_kernel(const at::Tensor& grad_output, const at::Tensor& offsets,
                                      at::IntArrayRef input_hw, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  const MaxPoolCall call =
      prepare_max_pool2d_backward(grad_output, offsets, input_hw, kernel_size, stride, padding, dilation);
  const at::Tensor &off = call.offsets, &dy = call.grad_output, &dx = call.grad_input;
  const PoolGeometry& g = call.g;
  const int64_t batch = call.batch, channels = call.channels;
  if (dx.numel() > 0) {
    const bool channels_last = call.channels_last;
    // A contiguous tensor is scattered plane by plane, a channels_last one image by image.
    const int64_t units = channels_last ? batch : batch * channels;
    const int64_t unit_channels = channels_last ? channels : 1;
    const int64_t in_unit = g.in_h * g.in_w * unit_channels, out_unit = g.out_h * g.out_w * unit_channels;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
      using acc_t = acc_type<scalar_t>;
      const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
      scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
      dispatch_offset(off.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        const offset_t* offset_data = off.const_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
            // fp16/bf16 add in an fp32 buffer; fp32/fp64 add in place, as torch does.
            std::vector<acc_t> buffer(std::is_same<acc_t, scalar_t>::value ? 0 : in_unit);
            for (int64_t unit = begin; unit < end; ++unit) {
              scalar_t* dx_unit = dx_data + unit * in_unit;
              acc_t* sum = buffer.empty() ? reinterpret_cast<acc_t*>(dx_unit) : buffer.data();
              std::fill(sum, sum + in_unit, acc_t(0));
              scatter_image<W>(dy_data + unit * out_unit, offset_data + unit * out_unit, g, unit_channels, sum);
              if (!buffer.empty()) {
                for (int64_t i = 0; i < in_unit; ++i) dx_unit[i] = static_cast<scalar_t>(sum[i]);
              }
            }
          });
        });
      });
    });
  }
  return call.shaped(dx);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_forward_kernel);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_kernel);
}

}  // namespace cnnfast
