// cnnfast::bn_add_relu: its kernel (CPU and CUDA keys) and its autograd formula.
//
// relu(batch_norm(input) + identity), ResNet's block tail, keeping input, identity and the
// per-channel mean / inverse std for backward, never the output. A composite of the BN-add-ReLU
// kernels of one backend, called through the dispatcher (the 'triton' ones are registered from
// Python, cnnfast/ops/bn_add_relu.py, with every fake function). In C++ rather than through
// torch.library's Python autograd wrapper for the same reason as bn_relu_conv2d.cpp: it runs once
// per residual block, and there the wrapper and its dozen small per-channel ops cost ~0.5 ms of
// host time a call, more than the kernels compute at ResNet's late-stage shapes on a CPU.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

#include "batch_norm_terms.h"

namespace {

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;
using TensorRef = const Tensor&;
using Tensor2 = std::tuple<Tensor, Tensor>;
using cnnfast::composite::find_op;
using cnnfast::composite::scale_shift;

constexpr const char* kOp = "cnnfast.bn_add_relu";

// The BN-add-ReLU kernels of one backend (batch_norm_terms.h backend_ops picks the table).
struct BnAddReluOps {
  c10::TypedOperatorHandle<Tensor(TensorRef, TensorRef, TensorRef, const OptionalTensor&)> apply;
  c10::TypedOperatorHandle<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, const OptionalTensor&)>
      backward_reduce;
  c10::TypedOperatorHandle<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef,
                                   const OptionalTensor&, bool)>
      backward;

  explicit BnAddReluOps(const std::string& suffix)
      : apply(find_op<Tensor(TensorRef, TensorRef, TensorRef, const OptionalTensor&)>("cnnfast::_bn_add_relu_apply" +
                                                                                     suffix)),
        backward_reduce(
            find_op<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, const OptionalTensor&)>(
                "cnnfast::_bn_add_relu_backward_reduce" + suffix)),
        backward(find_op<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef,
                                 const OptionalTensor&, bool)>("cnnfast::_bn_add_relu_backward" + suffix)) {}
};

const BnAddReluOps& bn_add_relu_ops(c10::string_view backend) {
  return cnnfast::composite::backend_ops<BnAddReluOps>(backend, kOp);
}

Tensor bn_add_relu_kernel(const Tensor& input, const OptionalTensor& identity, const Tensor& mean,
                          const Tensor& invstd, const OptionalTensor& weight, const OptionalTensor& bias,
                          bool training, c10::string_view backend) {
  auto [scale, shift] = scale_shift(mean, invstd, weight, bias);
  return bn_add_relu_ops(backend).apply.call(input, scale, shift, identity);
}

class BnAddReluFunction : public torch::autograd::Function<BnAddReluFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& input, const OptionalTensor& identity,
                        const Tensor& mean, const Tensor& invstd, const OptionalTensor& weight,
                        const OptionalTensor& bias, bool training, c10::string_view backend) {
    static const auto op = find_op<decltype(bn_add_relu_kernel)>("cnnfast::bn_add_relu");
    Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, identity, mean, invstd, weight, bias, training, backend);
    }
    ctx->save_for_backward({input, identity.value_or(Tensor()), mean, invstd, weight.value_or(Tensor()),
                            bias.value_or(Tensor())});
    ctx->saved_data["training"] = training;
    ctx->saved_data["backend"] = std::string(backend);
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const Tensor& grad_output = grad_outputs[0];
    cnnfast::composite::refuse_double_backward();
    const auto saved = ctx->get_saved_variables();
    const Tensor &input = saved[0], &mean = saved[2], &invstd = saved[3];
    const OptionalTensor identity = saved[1].defined() ? OptionalTensor(saved[1]) : std::nullopt;
    const OptionalTensor weight = saved[4].defined() ? OptionalTensor(saved[4]) : std::nullopt;
    const OptionalTensor bias = saved[5].defined() ? OptionalTensor(saved[5]) : std::nullopt;
    const bool training = ctx->saved_data["training"].toBool();
    // needs_input_grad counts the tensors given (input, identity if present, mean, invstd, then
    // weight and bias where present).
    const size_t weight_edge = 3 + identity.has_value(), bias_edge = weight_edge + weight.has_value();
    const bool need_input = ctx->needs_input_grad(0);
    const bool need_identity = identity.has_value() && ctx->needs_input_grad(1);
    const bool need_weight = weight.has_value() && ctx->needs_input_grad(weight_edge);
    const bool need_bias = bias.has_value() && ctx->needs_input_grad(bias_edge);
    const BnAddReluOps& ops = bn_add_relu_ops(ctx->saved_data["backend"].toStringRef());
    // The sub-ops need no graph of their own.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [scale, shift] = scale_shift(mean, invstd, weight, bias);

    Tensor sum_dz, sum_dz_xmu, grad_input, grad_identity, grad_weight, grad_bias;
    if (need_weight || need_bias || (need_input && training)) {
      std::tie(sum_dz, sum_dz_xmu) = ops.backward_reduce.call(grad_output, input, mean, scale, shift, identity);
    }
    if (need_input || need_identity) {
      Tensor coef_x, coef_c;
      if (training && need_input) {
        const c10::Scalar count(cnnfast::composite::values_per_channel(input));
        std::tie(coef_x, coef_c) =
            cnnfast::composite::input_grad_coefficients(scale, invstd, mean, sum_dz, sum_dz_xmu, count);
      } else {
        coef_x = coef_c = at::zeros_like(scale);
      }
      Tensor dx;
      std::tie(dx, grad_identity) =
          ops.backward.call(grad_output, input, scale, shift, coef_x, coef_c, identity, need_identity);
      grad_input = need_input ? dx : Tensor();
    }
    if (need_weight) {
      grad_weight = (sum_dz_xmu * invstd).to(weight->scalar_type());
    }
    if (need_bias) {
      grad_bias = sum_dz.to(bias->scalar_type());
    }
    return {grad_input, grad_identity, Tensor(), Tensor(), grad_weight, grad_bias, Tensor(), Tensor()};
  }
};

Tensor bn_add_relu_autograd(const Tensor& input, const OptionalTensor& identity, const Tensor& mean,
                            const Tensor& invstd, const OptionalTensor& weight, const OptionalTensor& bias,
                            bool training, c10::string_view backend) {
  return BnAddReluFunction::apply(input, identity, mean, invstd, weight, bias, training, backend);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("bn_add_relu", &bn_add_relu_kernel);
}

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("bn_add_relu", &bn_add_relu_kernel);
}

TORCH_LIBRARY_IMPL(cnnfast, Autograd, m) {
  m.impl("bn_add_relu", &bn_add_relu_autograd);
}
