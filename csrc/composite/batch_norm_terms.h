// What the composite BatchNorm ops (bn_relu_conv2d.cpp, bn_add_relu.cpp) share: finding the
// sub-ops they call through the dispatcher, BN as a per-channel multiply-add, and the
// coefficients of the input gradient (the math: csrc/common/batch_norm.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace cnnfast {
namespace composite {

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").typed<Signature>();
}

// The kernels of one backend: Ops(suffix) finds them ("" for "cpp": csrc/cpu and csrc/cuda;
// "_triton" for "triton": triton_kernels/, registered from Python). One table per backend and type.
template <typename Ops>
const Ops& backend_ops(c10::string_view backend, const char* op) {
  static const Ops cpp(""), triton("_triton");
  if (backend == "cpp") {
    return cpp;
  }
  TORCH_CHECK(backend == "triton", op, ": backend must be \"cpp\" or \"triton\", got \"", backend, "\"");
  return triton;
}

// BN as a per-channel multiply-add: scale = gamma * invstd, shift = beta - mean * scale.
inline std::tuple<at::Tensor, at::Tensor> scale_shift(const at::Tensor& mean, const at::Tensor& invstd,
                                                      const std::optional<at::Tensor>& bn_weight,
                                                      const std::optional<at::Tensor>& bn_bias) {
  at::Tensor scale = bn_weight.has_value() ? invstd * bn_weight->to(invstd.scalar_type()) : invstd;
  at::Tensor shift = bn_bias.has_value() ? bn_bias->to(invstd.scalar_type()) - mean * scale : -mean * scale;
  return {scale, shift};
}

// N * H * W, the values BatchNorm averages over per channel of a 4-d input: a product, never
// numel / C, which divides by zero (SIGFPE) for an input of no channels.
inline c10::SymInt values_per_channel(const at::Tensor& input) {
  return input.sym_size(0) * input.sym_size(2) * input.sym_size(3);
}

// dx = dz * mask * scale + coef_x * x + coef_c: BN's dependence through the batch statistics, from
// the two gradient sums over `count` values per channel. `count` is a tensor where the sums were
// all-reduced across ranks (so was the count), the local number of values per channel otherwise.
template <typename Count>
std::tuple<at::Tensor, at::Tensor> input_grad_coefficients(const at::Tensor& scale, const at::Tensor& invstd,
                                                           const at::Tensor& mean, const at::Tensor& sum_dz,
                                                           const at::Tensor& sum_dz_xmu, const Count& count) {
  at::Tensor coef_x = -scale * invstd * invstd * sum_dz_xmu / count;
  at::Tensor coef_c = -scale * sum_dz / count - coef_x * mean;
  return {coef_x, coef_c};
}

// The backward kernels have no derivatives of their own. Autograd runs a backward with grad mode on
// exactly when create_graph=True was asked (gradient penalties): stop then, with or without a
// grad_output that requires grad, rather than return a gradient whose derivatives are silently
// zero (cnnfast/ops/_higher_order.py says the same for the Python-side ops).
inline void refuse_double_backward() {
  TORCH_CHECK(!at::GradMode::is_enabled(),
              "cnnfast: double backward (torch.autograd.grad / backward with create_graph=True) through bn_relu / "
              "bn_relu_conv2d / bn_add_relu / the memory-efficient DenseNet and DPN blocks is not supported; run "
              "those under `with cnnfast.backend('reference'):` for it");
}

}  // namespace composite
}  // namespace cnnfast
