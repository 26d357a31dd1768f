// CUDA bindings of 2-d max pooling (the kernels: max_pool2d_kernels.cuh; the math:
// csrc/common/max_pool2d.h). Shapes, layouts, offset dtypes and checks are those of
// csrc/cpu/max_pool2d.cpp.
//
// max_pool2d_kernels.cuh comes before every torch header: it re-enables the __half /
// __nv_bfloat16 conversions that torch's build flags turn off, which only works before
// cuda_fp16.h is included.
#include "max_pool2d_kernels.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../op_helpers.h"
#include "binding_helpers.cuh"

namespace cnnfast {
namespace {

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_kernel(const at::Tensor& input,
                                                             at::IntArrayRef kernel_size,
                                                             at::IntArrayRef stride,
                                                             at::IntArrayRef padding,
                                                             at::IntArrayRef dilation, bool ceil_mode) {
  check_cuda(input, "input", "cnnfast.max_pool2d", "input", input.device());
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, "cnnfast.max_pool2d: input must be 3-d or 4-d");
  check_floating(input, "input");
  const c10::cuda::CUDAGuard guard(input.device());
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
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_pool2d_cuda", [&] {
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const cuda_t* x_data = reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>());
      cuda_t* out_data = reinterpret_cast<cuda_t*>(out.mutable_data_ptr<scalar_t>());
      dispatch_offset(offsets.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        offset_t* offset_data = offsets.mutable_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          C10_CUDA_CHECK((launch_max_pool2d_forward<cuda_t, offset_t, W>(x_data, out_data, offset_data, batch,
                                                                         channels, channels_last, g, stream)));
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
  const char* op = "cnnfast.max_pool2d backward";
  check_cuda(grad_output, "grad_output", op, "grad_output", grad_output.device());
  check_cuda(offsets, "offsets", op, "grad_output", grad_output.device());
  TORCH_CHECK(grad_output.sizes() == offsets.sizes() && (offsets.dim() == 3 || offsets.dim() == 4),
              "cnnfast.max_pool2d backward: grad_output and offsets must have the output's shape");
  TORCH_CHECK(offsets.scalar_type() == at::kByte || offsets.scalar_type() == at::kInt,
              "cnnfast.max_pool2d backward: offsets must be uint8 or int32");
  TORCH_CHECK(input_hw.size() == 2, "cnnfast.max_pool2d backward: input_hw must have 2 values");
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const bool unbatched = offsets.dim() == 3;
  const auto format = output_memory_format(offsets);
  const at::Tensor off = (unbatched ? offsets.unsqueeze(0) : offsets).contiguous(format);
  const at::Tensor dy = (unbatched ? grad_output.unsqueeze(0) : grad_output).contiguous(format);
  const int64_t batch = off.size(0), channels = off.size(1);
  PoolGeometry g = pool_geometry(input_hw[0], input_hw[1], kernel_size, stride, padding, dilation);
  g.out_h = off.size(2);
  g.out_w = off.size(3);
  TORCH_CHECK(offset_dtype(g) == offsets.scalar_type(),
              "cnnfast.max_pool2d backward: offsets dtype does not match the window");
  TORCH_CHECK(g.out_h <= pooled_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, true) &&
                  g.out_w <= pooled_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, true),
              "cnnfast.max_pool2d backward: offsets do not come from this input size and window");
  at::Tensor dx = at::empty({batch, channels, g.in_h, g.in_w}, dy.options().memory_format(format));
  if (dx.numel() > 0) {
    const bool channels_last = format == at::MemoryFormat::ChannelsLast;
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "max_pool2d_backward_cuda", [&] {
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const cuda_t* dy_data = reinterpret_cast<const cuda_t*>(dy.const_data_ptr<scalar_t>());
      cuda_t* dx_data = reinterpret_cast<cuda_t*>(dx.mutable_data_ptr<scalar_t>());
      dispatch_offset(off.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        const offset_t* offset_data = off.const_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          C10_CUDA_CHECK((launch_max_pool2d_backward<cuda_t, offset_t, W>(dy_data, offset_data, dx_data, batch,
                                                                          channels, channels_last, g, stream)));
        });
      });
    });
  }
  return unbatched ? dx.squeeze(0) : dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_forward_kernel);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_kernel);
}

}  // namespace cnnfast
