// cnnfast::bn_relu_conv2d: its kernel (CPU and CUDA keys) and its autograd formula.
//
// A composite of cnnfast's BN-ReLU ops and aten's convolution. It is written in C++, not Python,
// because it runs once per layer of a network: through Python (torch.library's autograd wrapper
// and some twenty small per-channel ops) each call cost ~0.3 ms of host time, more than the
// whole unit computes at DenseNet's late-block shapes on a CPU, and more than it computes at any
// shape on a GPU. The sub-ops are called through the dispatcher, so that the 'triton' backend
// reaches the Triton kernels that cnnfast/ops/*.py registers, and torch.compile traces the
// backward as the same sub-ops (their fake functions are in Python).
//
// Kept for backward: the input and per-channel vectors. relu(bn(x)) is a temporary of the forward
// and is recomputed in the backward for the convolution's weight gradient.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "batch_norm_terms.h"

namespace {

using cnnfast::composite::find_op;
using cnnfast::composite::scale_shift;

using at::Tensor;
using OptionalTensor = std::optional<Tensor>;

constexpr const char* kOp = "cnnfast.bn_relu_conv2d";

using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using TensorRef = const Tensor&;

// The BN-ReLU ops of one backend (batch_norm_terms.h backend_ops picks the table), as
// cnnfast/ops/batch_norm.py `kernels` gives them to Python.
struct BnReluOps {
  c10::TypedOperatorHandle<Tensor(TensorRef, TensorRef, TensorRef)> bn_relu;
  c10::TypedOperatorHandle<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)> backward_reduce;
  c10::TypedOperatorHandle<Tensor(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)> backward;

  explicit BnReluOps(const std::string& suffix)
      : bn_relu(find_op<Tensor(TensorRef, TensorRef, TensorRef)>("cnnfast::bn_relu" + suffix)),
        backward_reduce(find_op<Tensor2(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)>(
            "cnnfast::_bn_relu_backward_reduce" + suffix)),
        backward(find_op<Tensor(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)>(
            "cnnfast::_bn_relu_backward" + suffix)) {}
};

const BnReluOps& bn_relu_ops(c10::string_view backend) {
  return cnnfast::composite::backend_ops<BnReluOps>(backend, kOp);
}

// The Triton 1x1 convolutions with BN-ReLU fused into their GEMMs (cnnfast/ops/conv1x1_bn_relu.py).
struct FusedConv1x1Ops {
  c10::TypedOperatorHandle<Tensor(TensorRef, TensorRef, TensorRef, TensorRef, const OptionalTensor&)> forward =
      find_op<Tensor(TensorRef, TensorRef, TensorRef, TensorRef, const OptionalTensor&)>(
          "cnnfast::_conv1x1_bn_relu_triton");
  c10::TypedOperatorHandle<Tensor(TensorRef, TensorRef, TensorRef, TensorRef)> weight_grad =
      find_op<Tensor(TensorRef, TensorRef, TensorRef, TensorRef)>("cnnfast::_conv1x1_bn_relu_weight_grad_triton");
  c10::TypedOperatorHandle<Tensor3(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)> input_grad =
      find_op<Tensor3(TensorRef, TensorRef, TensorRef, TensorRef, TensorRef, TensorRef)>(
          "cnnfast::_conv1x1_bn_relu_input_grad_triton");
};

const FusedConv1x1Ops& fused_conv1x1_ops() {
  static const FusedConv1x1Ops ops;
  return ops;
}

struct ConvArgs {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
};

// Whether the Triton GEMM with the BN-ReLU prologue runs this convolution: a 1x1, unstrided,
// ungrouped convolution with the 'triton' backend, in one dtype (not under autocast), of more than
// one input channel (one is no GEMM; aten's convolution gives its output the layout of
// conv_input's, which the fake function reports).
bool fused_1x1(c10::string_view backend, const Tensor& input, const Tensor& weight, const ConvArgs& conv) {
  return backend == "triton" && input.scalar_type() == weight.scalar_type() && input.sym_size(1) != 1 &&
         weight.sym_size(2) == 1 && weight.sym_size(3) == 1 && conv.stride == std::vector<int64_t>{1, 1} &&
         conv.padding == std::vector<int64_t>{0, 0} && conv.groups == 1;
}

// relu(bn(x)) as the convolution's input. With one channel a channels_last tensor's strides,
// (H*W, 1, W, 1), also read as contiguous ones; torch's composition hands its convolution the
// contiguous strides (relu's), and torch's CPU convolution misreads the others (torch 2.13:
// values off by up to 1e34 with a stride of (1, 2)). The same memory, viewed with those strides.
// cnnfast/ops/bn_relu_conv2d.py `_conv_input` gives the fake function the same view.
Tensor conv_input(const Tensor& r) {
  return r.sym_size(1) == 1 ? r.squeeze(1).unsqueeze(1) : r;
}

Tensor bn_relu_conv2d_kernel(const Tensor& input, const Tensor& mean, const Tensor& invstd,
                             const OptionalTensor& bn_weight, const OptionalTensor& bn_bias, const Tensor& weight,
                             const OptionalTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, int64_t groups, bool training, c10::string_view backend,
                             c10::string_view sync_group) {
  const ConvArgs conv{stride.vec(), padding.vec(), dilation.vec(), groups};
  const BnReluOps& ops = bn_relu_ops(backend);
  auto [scale, shift] = scale_shift(mean, invstd, bn_weight, bn_bias);
  if (fused_1x1(backend, input, weight, conv)) {
    return fused_conv1x1_ops().forward.call(input, scale, shift, weight, bias);
  }
  // Under autocast the convolution runs in the weight's (lower) precision, BN-ReLU in the input's.
  return at::convolution(conv_input(ops.bn_relu.call(input, scale, shift).to(weight.scalar_type())), weight, bias,
                         conv.stride, conv.padding, conv.dilation, false, {0, 0}, conv.groups);
}

// BN's two gradient sums and the element count per channel, summed over the ranks of the
// torch.distributed group `name` (functional collectives: torch.compile traces them too).
std::tuple<Tensor, Tensor, Tensor> all_reduce_gradient_sums(const Tensor& sum_dz, const Tensor& sum_dz_xmu,
                                                             const c10::SymInt& count, const std::string& name) {
  // Called boxed: the C++ type of its group argument differs across torch versions.
  static const auto all_reduce = c10::Dispatcher::singleton().findSchemaOrThrow("_c10d_functional::all_reduce", "");
  static const auto wait = find_op<Tensor(TensorRef)>("_c10d_functional::wait_tensor");
  const c10::SymInt channels = sum_dz.sym_size(0);
  Tensor combined = at::cat({sum_dz, sum_dz_xmu, at::full({1}, c10::Scalar(count), sum_dz.options())});
  c10::Stack stack{combined, std::string("sum"), name};
  all_reduce.callBoxed(stack);
  combined = wait.call(stack.at(0).toTensor());
  return {combined.narrow_symint(0, 0, channels), combined.narrow_symint(0, channels, channels),
          combined.narrow_symint(0, 2 * channels, 1)};
}

using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

// The gradients of bn_relu_conv2d (input, bn_weight, bn_bias, weight, bias; undefined where
// output_mask is false), also an op of its own (cnnfast::_bn_relu_conv2d_backward) so that the
// DenseNet block's backward runs it layer by layer. The formulas (dx = dz * mask * scale +
// coef_x * x + coef_c, with the ReLU mask and BN's two sums from one pass) are those of
// csrc/common/batch_norm.h.
Tensor5 bn_relu_conv2d_backward(const Tensor& grad_output, const Tensor& input, const Tensor& mean,
                                const Tensor& invstd, const OptionalTensor& bn_weight, const OptionalTensor& bn_bias,
                                const Tensor& weight, bool has_bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups, bool training, c10::string_view backend,
                                c10::string_view sync_group, std::array<bool, 5> output_mask) {
  const ConvArgs conv{stride.vec(), padding.vec(), dilation.vec(), groups};
  const auto [need_input, need_bn_weight, need_bn_bias, need_weight, need_bias_given] = output_mask;
  TORCH_CHECK(!(need_bn_weight && !bn_weight.has_value()) && !(need_bn_bias && !bn_bias.has_value()),
              kOp, ": a gradient of bn_weight / bn_bias was asked for without the tensor");
  const bool need_bias = need_bias_given && has_bias;
  const bool need_z = need_input || need_bn_weight || need_bn_bias;
  const BnReluOps& ops = bn_relu_ops(backend);
  auto [scale, shift] = scale_shift(mean, invstd, bn_weight, bn_bias);

  Tensor grad_weight, grad_bias, grad_z, sum_dz, sum_dz_xmu;
  if (fused_1x1(backend, input, weight, conv)) {
    const FusedConv1x1Ops& fused = fused_conv1x1_ops();
    if (need_weight) {
      grad_weight = fused.weight_grad.call(grad_output, input, scale, shift);
    }
    if (need_z) {
      std::tie(grad_z, sum_dz, sum_dz_xmu) = fused.input_grad.call(grad_output, input, weight, mean, scale, shift);
    }
    if (need_bias) {
      // Summed in fp32 (fp64 for fp64), as the Triton kernels accumulate.
      const auto acc = grad_output.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      grad_bias = grad_output.sum({0, 2, 3}, false, acc).to(weight.scalar_type());
    }
  } else {
    Tensor grad_r;
    {
      // The recomputed activation lives only for the weight gradient; a frozen convolution needs
      // its input only for the shape, so no memory stands behind it. Symbolic sizes throughout, so
      // that torch.compile traces this with dynamic shapes.
      Tensor r = need_weight ? conv_input(ops.bn_relu.call(input, scale, shift).to(weight.scalar_type()))
                             : at::zeros({}, weight.options()).expand_symint(input.sym_sizes());
      const at::OptionalSymIntArrayRef bias_sizes =
          has_bias ? at::OptionalSymIntArrayRef(weight.sym_sizes().slice(0, 1)) : std::nullopt;
      const c10::SymInt no_output_padding[2] = {0, 0};
      std::tie(grad_r, grad_weight, grad_bias) = at::convolution_backward_symint(
          grad_output, r, weight, bias_sizes, c10::fromIntArrayRefSlow(conv.stride),
          c10::fromIntArrayRefSlow(conv.padding), c10::fromIntArrayRefSlow(conv.dilation), false, no_output_padding,
          conv.groups, {need_z, need_weight, need_bias});
      // Some of aten's backends fill outputs not asked for: the op's contract is undefined ones.
      grad_weight = need_weight ? grad_weight : Tensor();
      grad_bias = need_bias ? grad_bias : Tensor();
    }
    if (need_z) {
      grad_z = grad_r.to(input.scalar_type());
      // dz here is the gradient of relu's output: the kernels apply the mask themselves.
      std::tie(sum_dz, sum_dz_xmu) = ops.backward_reduce.call(grad_z, input, mean, scale, shift);
    }
  }

  Tensor grad_input, grad_bn_weight, grad_bn_bias;
  if (need_z) {
    Tensor coef_x, coef_c;
    if (training) {
      const c10::Scalar local_count(cnnfast::composite::values_per_channel(input));
      // Parameter gradients from this rank's sums (as nn.SyncBatchNorm); the input gradient from
      // every rank's, since the statistics were.
      Tensor global_dz = sum_dz, global_dz_xmu = sum_dz_xmu, global_count;
      if (!sync_group.empty()) {
        std::tie(global_dz, global_dz_xmu, global_count) =
            all_reduce_gradient_sums(sum_dz, sum_dz_xmu, local_count.toSymInt(), std::string(sync_group));
      }
      std::tie(coef_x, coef_c) =
          global_count.defined()
              ? cnnfast::composite::input_grad_coefficients(scale, invstd, mean, global_dz, global_dz_xmu,
                                                            global_count)
              : cnnfast::composite::input_grad_coefficients(scale, invstd, mean, global_dz, global_dz_xmu,
                                                            local_count);
    } else {
      coef_x = coef_c = at::zeros_like(scale);
    }
    if (need_input) {
      grad_input = ops.backward.call(grad_z, input, scale, shift, coef_x, coef_c);
    }
    if (need_bn_weight) {
      grad_bn_weight = (sum_dz_xmu * invstd).to(bn_weight->scalar_type());
    }
    if (need_bn_bias) {
      grad_bn_bias = sum_dz.to(bn_bias->scalar_type());
    }
  }
  return {grad_input, grad_bn_weight, grad_bn_bias, grad_weight, grad_bias};
}

class BnReluConv2dFunction : public torch::autograd::Function<BnReluConv2dFunction> {
 public:
  static Tensor forward(torch::autograd::AutogradContext* ctx, const Tensor& input, const Tensor& mean,
                        const Tensor& invstd, const OptionalTensor& bn_weight, const OptionalTensor& bn_bias,
                        const Tensor& weight, const OptionalTensor& bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, bool training,
                        c10::string_view backend, c10::string_view sync_group) {
    static const auto op = find_op<decltype(bn_relu_conv2d_kernel)>("cnnfast::bn_relu_conv2d");
    Tensor output;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      output = op.call(input, mean, invstd, bn_weight, bn_bias, weight, bias, stride, padding, dilation, groups,
                       training, backend, sync_group);
    }
    ctx->save_for_backward({input, mean, invstd, bn_weight.value_or(Tensor()), bn_bias.value_or(Tensor()), weight});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["training"] = training;
    ctx->saved_data["backend"] = std::string(backend);
    ctx->saved_data["sync_group"] = std::string(sync_group);
    return output;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    static const auto backward_op = find_op<decltype(bn_relu_conv2d_backward)>("cnnfast::_bn_relu_conv2d_backward");
    const Tensor& grad_output = grad_outputs[0];
    cnnfast::composite::refuse_double_backward();
    const auto saved = ctx->get_saved_variables();
    const OptionalTensor bn_weight = saved[3].defined() ? OptionalTensor(saved[3]) : std::nullopt;
    const OptionalTensor bn_bias = saved[4].defined() ? OptionalTensor(saved[4]) : std::nullopt;
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts the tensors given (input, mean, invstd, then the optional ones present).
    const size_t bn_weight_edge = 3, bn_bias_edge = bn_weight_edge + bn_weight.has_value(),
                 weight_edge = bn_bias_edge + bn_bias.has_value();
    const std::array<bool, 5> output_mask{
        ctx->needs_input_grad(0), bn_weight.has_value() && ctx->needs_input_grad(bn_weight_edge),
        bn_bias.has_value() && ctx->needs_input_grad(bn_bias_edge), ctx->needs_input_grad(weight_edge),
        has_bias && ctx->needs_input_grad(weight_edge + 1)};
    // The sub-ops need no graph of their own (and their Python autograd wrappers cost time).
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_bn_weight, grad_bn_bias, grad_weight, grad_bias] = backward_op.call(
        grad_output, saved[0], saved[1], saved[2], bn_weight, bn_bias, saved[5], has_bias,
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(), ctx->saved_data["groups"].toInt(),
        ctx->saved_data["training"].toBool(), ctx->saved_data["backend"].toStringRef(),
        ctx->saved_data["sync_group"].toStringRef(), output_mask);
    return {grad_input, Tensor(), Tensor(), grad_bn_weight, grad_bn_bias, grad_weight, grad_bias,
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor bn_relu_conv2d_autograd(const Tensor& input, const Tensor& mean, const Tensor& invstd,
                               const OptionalTensor& bn_weight, const OptionalTensor& bn_bias, const Tensor& weight,
                               const OptionalTensor& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation, int64_t groups, bool training, c10::string_view backend,
                               c10::string_view sync_group) {
  return BnReluConv2dFunction::apply(input, mean, invstd, bn_weight, bn_bias, weight, bias, stride, padding,
                                     dilation, groups, training, backend, sync_group);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("bn_relu_conv2d", &bn_relu_conv2d_kernel);
  m.impl("_bn_relu_conv2d_backward", &bn_relu_conv2d_backward);
}

TORCH_LIBRARY_IMPL(cnnfast, CUDA, m) {
  m.impl("bn_relu_conv2d", &bn_relu_conv2d_kernel);
  m.impl("_bn_relu_conv2d_backward", &bn_relu_conv2d_backward);
}

TORCH_LIBRARY_IMPL(cnnfast, Autograd, m) {
  m.impl("bn_relu_conv2d", &bn_relu_conv2d_autograd);
}
