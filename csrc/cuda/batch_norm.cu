// CUDA bindings of the BN-ReLU and BN-add-ReLU ops (the kernels: batch_norm_kernels.cuh; the math:
// csrc/common/batch_norm.h). Tensors are prepared as for the CPU kernels (prepare_bn_relu and
// per_channel in csrc/op_helpers.h, which also checks each per-channel tensor's length and that it is
// on the input's device); per-channel tensors are fp32 (fp64 for fp64 inputs).
//
// batch_norm_kernels.cuh comes before every torch header: it re-enables the __half /
// __nv_bfloat16 conversions that torch's build flags turn off, which only works before
// cuda_fp16.h is included.
#include "batch_norm_kernels.cuh"

#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <limits>
#include <optional>

#include "../op_helpers.h"
#include "binding_helpers.cuh"

namespace cnnfast {
namespace {

template <typename scalar_t>
const typename CudaScalar<scalar_t>::type* cuda_data(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaScalar<scalar_t>::type*>(t.const_data_ptr<scalar_t>());
}

template <typename scalar_t>
typename CudaScalar<scalar_t>::type* cuda_mutable_data(const at::Tensor& t) {
  return reinterpret_cast<typename CudaScalar<scalar_t>::type*>(t.mutable_data_ptr<scalar_t>());
}

// A kernel's scratch accumulators; the caching allocator makes this cheap, and stream order keeps
// it alive until the kernels are done with it. Undefined (nullptr) when none are needed.
template <typename acc_t>
at::Tensor workspace_tensor(int64_t elements, const at::Tensor& input) {
  if (elements <= 0) return at::Tensor();
  return at::empty({elements}, input.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

template <typename acc_t>
acc_t* workspace_data(const at::Tensor& workspace) {
  return workspace.defined() ? workspace.mutable_data_ptr<acc_t>() : nullptr;
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cuda(const at::Tensor& input) {
  check_cuda(input, "input", "cnnfast.batch_norm_stats", "input", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const BnReluCall call = prepare_bn_relu(input, nullptr, false);
  const ChannelGeometry& g = call.x_geometry;
  at::Tensor mean = per_channel_result(input), var = per_channel_result(input);
  if (g.per_channel() == 0) {  // as torch: the mean and variance of no values are NaN
    mean.fill_(std::numeric_limits<double>::quiet_NaN());
    var.fill_(std::numeric_limits<double>::quiet_NaN());
    return {mean, var};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_stats_cuda", [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    const at::Tensor workspace = workspace_tensor<acc_t>(batch_norm_stats_workspace_elements<acc_t>(g), input);
    C10_CUDA_CHECK(launch_batch_norm_stats<cuda_t>(cuda_data<scalar_t>(call.x), g, mean.mutable_data_ptr<acc_t>(),
                                                   var.mutable_data_ptr<acc_t>(), workspace_data<acc_t>(workspace),
                                                   at::cuda::getCurrentCUDAStream()));
  });
  return {mean, var};
}

template <typename scalar_t>
const typename CudaScalar<scalar_t>::type* optional_cuda_data(const at::Tensor& t) {
  return t.defined() ? cuda_data<scalar_t>(t) : nullptr;
}

template <typename scalar_t>
typename CudaScalar<scalar_t>::type* optional_cuda_mutable_data(const at::Tensor& t) {
  return t.defined() ? cuda_mutable_data<scalar_t>(t) : nullptr;
}

// The device checks of the BN-ReLU / BN-add-ReLU ops' full-size tensors.
void check_bn_tensors(const char* op, const at::Tensor& input, const at::Tensor* grad_output,
                      const std::optional<at::Tensor>& residual) {
  check_cuda(input, "input", op, "input", input.device());
  if (grad_output != nullptr) check_cuda(*grad_output, "grad_output", op, "input", input.device());
  if (residual.has_value()) check_cuda(*residual, "residual", op, "input", input.device());
}

// `op` names the op in error messages: BN-ReLU's ops are these with no residual.
at::Tensor bn_add_relu_apply(const char* op, const at::Tensor& input, const at::Tensor& scale,
                             const at::Tensor& shift, const std::optional<at::Tensor>& residual) {
  check_bn_tensors(op, input, nullptr, residual);
  const c10::cuda::CUDAGuard guard(input.device());
  const BnReluCall call = prepare_bn_relu(input, nullptr, true, residual);
  const at::Tensor scale_c = per_channel(scale, input, "scale");
  const at::Tensor shift_c = per_channel(shift, input, "shift");
  if (input.numel() == 0) return call.result;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_cuda", [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    C10_CUDA_CHECK(launch_bn_add_relu<cuda_t>(
        cuda_data<scalar_t>(call.x), call.x_geometry, optional_cuda_data<scalar_t>(call.residual),
        call.residual_geometry, scale_c.const_data_ptr<acc_t>(), shift_c.const_data_ptr<acc_t>(),
        cuda_mutable_data<scalar_t>(call.result), call.result_geometry, at::cuda::getCurrentCUDAStream()));
  });
  return call.result;
}

at::Tensor bn_add_relu_apply_cuda(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
                                  const std::optional<at::Tensor>& residual) {
  return bn_add_relu_apply("cnnfast._bn_add_relu_apply", input, scale, shift, residual);
}

at::Tensor bn_relu_cuda(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift) {
  return bn_add_relu_apply("cnnfast.bn_relu", input, scale, shift, std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward_reduce(const char* op, const at::Tensor& grad_output,
                                                               const at::Tensor& input, const at::Tensor& mean,
                                                               const at::Tensor& scale, const at::Tensor& shift,
                                                               const std::optional<at::Tensor>& residual) {
  check_bn_tensors(op, input, &grad_output, residual);
  const c10::cuda::CUDAGuard guard(input.device());
  const BnReluCall call = prepare_bn_relu(input, &grad_output, false, residual);
  const at::Tensor mean_c = per_channel(mean, input, "mean");
  const at::Tensor scale_c = per_channel(scale, input, "scale");
  const at::Tensor shift_c = per_channel(shift, input, "shift");
  at::Tensor sum_dz = per_channel_result(input), sum_dz_xmu = per_channel_result(input);
  if (input.numel() == 0) return {sum_dz.zero_(), sum_dz_xmu.zero_()};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_backward_reduce_cuda",
                                  [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    const at::Tensor workspace =
        workspace_tensor<acc_t>(bn_relu_backward_reduce_workspace_elements<acc_t>(call.x_geometry), input);
    C10_CUDA_CHECK(launch_bn_add_relu_backward_reduce<cuda_t>(
        cuda_data<scalar_t>(call.grad_output), call.grad_geometry, cuda_data<scalar_t>(call.x), call.x_geometry,
        optional_cuda_data<scalar_t>(call.residual), call.residual_geometry, mean_c.const_data_ptr<acc_t>(),
        scale_c.const_data_ptr<acc_t>(), shift_c.const_data_ptr<acc_t>(), sum_dz.mutable_data_ptr<acc_t>(),
        sum_dz_xmu.mutable_data_ptr<acc_t>(), workspace_data<acc_t>(workspace), at::cuda::getCurrentCUDAStream()));
  });
  return {sum_dz, sum_dz_xmu};
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                                const at::Tensor& mean, const at::Tensor& scale,
                                                                const at::Tensor& shift) {
  return bn_add_relu_backward_reduce("cnnfast._bn_relu_backward_reduce", grad_output, input, mean, scale, shift,
                                     std::nullopt);
}

std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward_reduce_cuda(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& mean,
                                                                    const at::Tensor& scale, const at::Tensor& shift,
                                                                    const std::optional<at::Tensor>& residual) {
  return bn_add_relu_backward_reduce("cnnfast._bn_add_relu_backward_reduce", grad_output, input, mean, scale, shift,
                                     residual);
}

std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward(const char* op, const at::Tensor& grad_output,
                                                        const at::Tensor& input, const at::Tensor& scale,
                                                        const at::Tensor& shift, const at::Tensor& coef_x,
                                                        const at::Tensor& coef_c,
                                                        const std::optional<at::Tensor>& residual,
                                                        bool residual_grad) {
  check_bn_tensors(op, input, &grad_output, residual);
  const c10::cuda::CUDAGuard guard(input.device());
  const BnReluCall call = prepare_bn_relu(input, &grad_output, true, residual, residual_grad);
  const at::Tensor scale_c = per_channel(scale, input, "scale");
  const at::Tensor shift_c = per_channel(shift, input, "shift");
  const at::Tensor coef_x_c = per_channel(coef_x, input, "coef_x");
  const at::Tensor coef_c_c = per_channel(coef_c, input, "coef_c");
  if (input.numel() == 0) return {call.result, call.grad_residual};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_backward_cuda", [&] {
    using cuda_t = typename CudaScalar<scalar_t>::type;
    using acc_t = acc_type<cuda_t>;
    C10_CUDA_CHECK(launch_bn_add_relu_backward<cuda_t>(
        cuda_data<scalar_t>(call.grad_output), call.grad_geometry, cuda_data<scalar_t>(call.x), call.x_geometry,
        optional_cuda_data<scalar_t>(call.residual), call.residual_geometry, scale_c.const_data_ptr<acc_t>(),
        shift_c.const_data_ptr<acc_t>(), coef_x_c.const_data_ptr<acc_t>(), coef_c_c.const_data_ptr<acc_t>(),
        cuda_mutable_data<scalar_t>(call.result), call.result_geometry,
        optional_cuda_mutable_data<scalar_t>(call.grad_residual), call.grad_residual_geometry,
        at::cuda::getCurrentCUDAStream()));
  });
  return {call.result, call.grad_residual};
}

at::Tensor bn_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale,
                                 const at::Tensor& shift, const at::Tensor& coef_x, const at::Tensor& coef_c) {
  return std::get<0>(bn_add_relu_backward("cnnfast._bn_relu_backward", grad_output, input, scale, shift, coef_x,
                                          coef_c, std::nullopt, false));
}

std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                                             const at::Tensor& scale, const at::Tensor& shift,
                                                             const at::Tensor& coef_x, const at::Tensor& coef_c,
                                                             const std::optional<at::Tensor>& residual,
                                                             bool residual_grad) {
  return bn_add_relu_backward("cnnfast._bn_add_relu_backward", grad_output, input, scale, shift, coef_x, coef_c,
                              residual, residual_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("batch_norm_stats", &batch_norm_stats_cuda);
  m.impl("bn_relu", &bn_relu_cuda);
  m.impl("_bn_relu_backward_reduce", &bn_relu_backward_reduce_cuda);
  m.impl("_bn_relu_backward", &bn_relu_backward_cuda);
  m.impl("_bn_add_relu_apply", &bn_add_relu_apply_cuda);
  m.impl("_bn_add_relu_backward_reduce", &bn_add_relu_backward_reduce_cuda);
  m.impl("_bn_add_relu_backward", &bn_add_relu_backward_cuda);
}

}  // namespace cnnfast
