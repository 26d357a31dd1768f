// CUDA bindings of the fused ReLU -> LRN -> max-pool (the kernels: relu_lrn_max_pool2d_kernels.cuh;
// the math: csrc/common/relu_lrn_max_pool2d.h). Shapes, layouts, offset dtypes and checks are
// those of csrc/cpu/relu_lrn_max_pool2d.cpp.
//
// relu_lrn_max_pool2d_kernels.cuh comes before every torch header: it re-enables the __half /
// __nv_bfloat16 conversions that torch's build flags turn off, which only works before
// cuda_fp16.h is included.
#include "relu_lrn_max_pool2d_kernels.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../op_helpers.h"
#include "binding_helpers.cuh"

namespace cnnfast {
namespace {

std::tuple<at::Tensor, at::Tensor> relu_lrn_max_pool2d_forward_kernel(
    const at::Tensor& input, int64_t size, double alpha, double beta, double k, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  check_cuda(input, "input", "cnnfast.relu_lrn_max_pool2d", "input", input.device());
  TORCH_CHECK(input.dim() == 4, "cnnfast.relu_lrn_max_pool2d: input must be 4-d");
  const c10::cuda::CUDAGuard guard(input.device());
  const MaxPoolCall call = prepare_max_pool2d_forward(input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor &x = call.x, &out = call.output, &offsets = call.offsets;
  const PoolGeometry& g = call.g;
  if (out.numel() > 0) {
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "relu_lrn_max_pool2d_cuda", [&] {
      using cuda_t = typename CudaScalar<scalar_t>::type;
      const auto p = lrn_params<acc_type<cuda_t>>(x, size, alpha, beta, k);
      const cuda_t* x_data = reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>());
      cuda_t* out_data = reinterpret_cast<cuda_t*>(out.mutable_data_ptr<scalar_t>());
      dispatch_offset(offsets.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        offset_t* offset_data = offsets.mutable_data_ptr<offset_t>();
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          C10_CUDA_CHECK((launch_relu_lrn_max_pool2d_forward<cuda_t, offset_t, W>(
              x_data, out_data, offset_data, call.batch, call.channels, call.channels_last, g, p, stream)));
        });
      });
    });
  }
  return {out, offsets};
}

at::Tensor relu_lrn_max_pool2d_backward_kernel(const at::Tensor& grad_output, const at::Tensor& offsets,
                                               const at::Tensor& input, int64_t size, double alpha, double beta,
                                               double k, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = "cnnfast.relu_lrn_max_pool2d backward";
  check_cuda(input, "input", op, "input", input.device());
  check_cuda(grad_output, "grad_output", op, "input", input.device());
  check_cuda(offsets, "offsets", op, "input", input.device());
  TORCH_CHECK(input.dim() == 4 && offsets.dim() == 4 && offsets.size(0) == input.size(0) &&
                  offsets.size(1) == input.size(1),
              op, ": offsets must be the 4-d output of this input");
  const c10::cuda::CUDAGuard guard(input.device());
  const MaxPoolCall call = prepare_max_pool2d_backward(grad_output, offsets, input.sizes().slice(2), kernel_size,
                                                       stride, padding, dilation);
  const at::Tensor &off = call.offsets, &dy = call.grad_output, &dx = call.grad_input;
  const PoolGeometry& g = call.g;
  if (dx.numel() > 0) {
    const at::Tensor x =
        input.contiguous(call.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    // The gradient of the LRN output: the one temporary of x's size.
    const at::Tensor grad_lrn = at::empty_like(dx);
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "relu_lrn_max_pool2d_backward_cuda",
                                    [&] {
      using cuda_t = typename CudaScalar<scalar_t>::type;
      using acc_t = acc_type<cuda_t>;
      const auto p = lrn_params<acc_t>(x, size, alpha, beta, k);
      // Only windows too long for shared memory need this ring (lrn.cu).
      at::Tensor ring;
      acc_t* ring_data = nullptr;
      const int64_t ring_elements = lrn_backward_global_ring_elements(p, x.numel() / p.channels);
      if (ring_elements > 0) {
        ring = at::empty({ring_elements}, x.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
        ring_data = ring.mutable_data_ptr<acc_t>();
      }
      dispatch_offset(off.scalar_type(), [&](auto offset_tag) {
        using offset_t = decltype(offset_tag);
        dispatch_window(g, [&](auto window) {
          using W = decltype(window);
          C10_CUDA_CHECK((launch_relu_lrn_max_pool2d_backward<cuda_t, offset_t, W>(
              reinterpret_cast<const cuda_t*>(dy.const_data_ptr<scalar_t>()), off.const_data_ptr<offset_t>(),
              reinterpret_cast<const cuda_t*>(x.const_data_ptr<scalar_t>()),
              reinterpret_cast<cuda_t*>(grad_lrn.mutable_data_ptr<scalar_t>()),
              reinterpret_cast<cuda_t*>(dx.mutable_data_ptr<scalar_t>()), call.batch, call.channels,
              call.channels_last, g, p, ring_data, stream)));
        });
      });
    });
  }
  // The input's own layout, as torch's ReLU backward (elementwise) gives it, the CPU kernel and the
  // fake function: a copy only where it is neither of the two the kernel walks (or a 1x1 output,
  // contiguous in both layouts, made offsets choose the other one).
  return with_elementwise_strides(dx, input);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("relu_lrn_max_pool2d", &relu_lrn_max_pool2d_forward_kernel);
  m.impl("_relu_lrn_max_pool2d_backward", &relu_lrn_max_pool2d_backward_kernel);
}

}  // namespace cnnfast
