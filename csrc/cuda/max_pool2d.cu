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
  const c10::cuda::CUDAGuard guard(input.device());
  const MaxPoolCall call = prepare_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor &x = call.x, &out = call.output, &offsets = call.offsets;
  const PoolGeometry& g = call.g;
  const int64_t batch = call.batch, channels = call.channels;
  if (out.numel() > 0) {
    const bool channels_last = call.channels_last;
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
  return {call.shaped(out), call.shaped(offsets)};
}

at::Tensor max_pool2d_backward_kernel(const at::Tensor& grad_output, const at::Tensor& offsets,
                                      at::IntArrayRef input_hw, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  const char* op = "cnnfast.max_pool2d backward";
  check_cuda(grad_output, "grad_output", op, "grad_output", grad_output.device());
  check_cuda(offsets, "offsets", op, "grad_output", grad_output.device());
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const MaxPoolCall call =
      prepare_max_pool2d_backward(grad_output, offsets, input_hw, kernel_size, stride, padding, dilation);
  const at::Tensor &off = call.offsets, &dy = call.grad_output, &dx = call.grad_input;
  const PoolGeometry& g = call.g;
  const int64_t batch = call.batch, channels = call.channels;
  if (dx.numel() > 0) {
    const bool channels_last = call.channels_last;
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
  return call.shaped(dx);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("max_pool2d", &max_pool2d_forward_kernel);
  m.impl("_max_pool2d_backward", &max_pool2d_backward_kernel);
}

}  // namespace cnnfast
