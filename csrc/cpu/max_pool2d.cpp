// CPU kernels of 2-d max pooling (the math: csrc/common/max_pool2d.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include "../op_helpers.h"

namespace cnnfast {
namespace {

// Runs body<W>() with W the 3/2 fast path when the geometry is AlexNet's, else the general one.
template <typename Body>
void dispatch_window(const PoolGeometry& g, const Body& body) {
  if (Window3Stride2::matches(g)) {
    body(Window3Stride2{});
  } else {
    body(AnyWindow{});
  }
}

template <typename Body>
void dispatch_offset(at::ScalarType type, const Body& body) {
  if (type == at::kByte) {
    body(uint8_t{});
  } else {
    body(int32_t{});
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_kernel(const at::Tensor& input,
                                                             at::IntArrayRef kernel_size,
                                                             at::IntArrayRef stride,
                                                             at::IntArrayRef padding,
                                                             at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, "cnnfast.max_pool2d: input must be 3-d or 4-d");
  check_floating(input, "input");
  const auto format = output_memory_format(input);
  const at::Tensor x = (input.dim() == 3 ? input.unsqueeze(0) : input).contiguous(format);
  const int64_t batch = x.size(0), channels = x.size(1);
  PoolGeometry g = pool_geometry(x.size(2), x.size(3), kernel_size, stride, padding, dilation);
  g.out_h = pooled_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, ceil_mode);
  g.out_w = pooled_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, ceil_mode);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "cnnfast.max_pool2d: the window is larger than the padded input");
  at::Tensor out = at::empty({batch, channels, g.out_h, g.out_w}, x.options().memory_format(format));
  at::Tensor offsets = at::empty(out.sizes(), out.options().dtype(offset_dtype(g)).memory_format(format));
  if (out.numel() > 0) {
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cpu", [&] {
      const scalar_t* x_data = x.const_data_ptr<scalar_t>();
      scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
      dispatch_offset(offsets.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        offset_t* offset_data = offsets.mutable_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
          if (!channels_last) {
            at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
              for (int64_t plane = begin; plane < end; ++plane) {
                for (int64_t oh = 0; oh < g.out_h; ++oh) {
                  for (int64_t ow = 0; ow < g.out_w; ++ow) {
                    const int64_t o = plane * out_plane + oh * g.out_w + ow;
                    max_pool2d_window<W>(x_data + plane * in_plane, g.in_w, 1, g, oh, ow,
                                         out_data + o, offset_data + o);
                  }
                }
              }
            });
          } else {
            at::parallel_for(0, batch * out_plane, 16, [&](int64_t begin, int64_t end) {
              for (int64_t position = begin; position < end; ++position) {
                const int64_t n = position / out_plane, oh = (position % out_plane) / g.out_w,
                              ow = position % g.out_w;
                const scalar_t* image = x_data + n * in_plane * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  const int64_t o = position * channels + c;
                  max_pool2d_window<W>(image + c, g.in_w * channels, channels, g, oh, ow,
                                       out_data + o, offset_data + o);
                }
              }
            });
          }
        });
      });
    });
  }
  if (input.dim() == 3) return {out.squeeze(0), offsets.squeeze(0)};
  return {out, offsets};
}

at::Tensor max_pool2d_backward_kernel(const at::Tensor& grad_output, const at::Tensor& offsets,
                                      at::IntArrayRef input_hw, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  TORCH_CHECK(grad_output.sizes() == offsets.sizes() && (offsets.dim() == 3 || offsets.dim() == 4),
              "cnnfast.max_pool2d backward: grad_output and offsets must have the output's shape");
  TORCH_CHECK(offsets.scalar_type() == at::kByte || offsets.scalar_type() == at::kInt,
              "cnnfast.max_pool2d backward: offsets must be uint8 or int32");
  TORCH_CHECK(input_hw.size() == 2, "cnnfast.max_pool2d backward: input_hw must have 2 values");
  const bool unbatched = offsets.dim() == 3;
  const auto format = output_memory_format(offsets);
  const at::Tensor off = (unbatched ? offsets.unsqueeze(0) : offsets).contiguous(format);
  const at::Tensor dy = (unbatched ? grad_output.unsqueeze(0) : grad_output).contiguous(format);
  const int64_t batch = off.size(0), channels = off.size(1);
  PoolGeometry g = pool_geometry(input_hw[0], input_hw[1], kernel_size, stride, padding, dilation);
  g.out_h = off.size(2);
  g.out_w = off.size(3);
  TORCH_CHECK(offset_dtype(g) == offsets.scalar_type(), "cnnfast.max_pool2d backward: offsets dtype does not match the window");
  at::Tensor dx = at::empty({batch, channels, g.in_h, g.in_w}, dy.options().memory_format(format));
  if (dx.numel() > 0) {
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
      const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
      scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
      dispatch_offset(off.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        const offset_t* offset_data = off.const_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
          if (!channels_last) {
            at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
              for (int64_t plane = begin; plane < end; ++plane) {
                for (int64_t ih = 0; ih < g.in_h; ++ih) {
                  for (int64_t iw = 0; iw < g.in_w; ++iw) {
                    dx_data[plane * in_plane + ih * g.in_w + iw] = static_cast<scalar_t>(
                        max_pool2d_input_grad<W>(dy_data + plane * out_plane, offset_data + plane * out_plane,
                                                 g.out_w, 1, g, ih, iw));
                  }
                }
              }
            });
          } else {
            at::parallel_for(0, batch * in_plane, 16, [&](int64_t begin, int64_t end) {
              for (int64_t position = begin; position < end; ++position) {
                const int64_t n = position / in_plane, ih = (position % in_plane) / g.in_w,
                              iw = position % g.in_w;
                const int64_t image = n * out_plane * channels;
                for (int64_t c = 0; c < channels; ++c) {
                  dx_data[position * channels + c] = static_cast<scalar_t>(max_pool2d_input_grad<W>(
                      dy_data + image + c, offset_data + image + c, g.out_w * channels, channels, g, ih, iw));
                }
              }
            });
          }
        });
      });
    });
  }
  return unbatched ? dx.squeeze(0) : dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("max_pool2d", &max_pool2d_forward_kernel);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_kernel);
}

}  // namespace cnnfast
