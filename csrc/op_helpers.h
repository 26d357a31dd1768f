// Torch-side helpers shared by the CPU and CUDA bindings: memory-format choice, argument
// invariants, and the translation of tensors and arguments into the torch-free structs of
// csrc/common. User-facing argument checks live once, in cnnfast/ops/_checks.py; the checks here
// only keep a direct torch.ops call from reading out of bounds.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "common/batch_norm.h"
#include "common/lrn.h"
#include "common/max_pool2d.h"

namespace cnnfast {

// The layout an op computes in and returns, as torch's own ops choose it: for a 4-d input, its
// suggest_memory_format() (channels_last for a channels_last tensor or a channel slice of one);
// contiguous otherwise. cnnfast/ops/_checks.py `output_memory_format` writes it out for the fake
// functions.
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  return x.dim() == 4 ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "cnnfast: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

// LRN walks a dense x as [outer][C][inner]: the dims whose strides are below the channels' form
// `inner` (x.stride(1) elements), those above form `outer`, in whatever order they lie (batch
// outermost or not, H and W swapped, channels between H and W, ...). A "column" is the C values
// of one (outer, inner) position; inner == 1 means the channels are innermost. With one channel
// every element is a column of its own, in any layout.
struct LrnGeometry {
  int64_t outer, inner;
  int64_t columns() const { return outer * inner; }
};

inline LrnGeometry lrn_geometry(const at::Tensor& x) {
  TORCH_CHECK(x.dim() >= 3, "cnnfast.local_response_norm: input must have 3 or more dims");
  TORCH_CHECK(x.numel() == 0 || x.is_non_overlapping_and_dense(),
              "cnnfast.local_response_norm: the kernels walk a dense tensor (prepare_local_response_norm)");
  if (x.numel() == 0) return {0, 1};
  const int64_t channels = x.size(1);
  const int64_t inner = channels > 1 ? x.stride(1) : x.numel();
  return {x.numel() / (channels * inner), inner};
}

// LrnParams::nan_scale: for beta > 1, the s from which torch's beta * s^(beta-1) (its pow backward)
// overflows, (max / beta)^(1/(beta-1)), or max itself (s overflowing), max the largest finite value
// of x's dtype, which torch computes in; never above the accumulation type's largest value.
inline double lrn_nan_scale(at::ScalarType dtype, double beta) {
  double largest = std::numeric_limits<double>::max();
  if (dtype == at::kFloat) largest = std::numeric_limits<float>::max();
  if (dtype == at::kHalf) largest = static_cast<double>(std::numeric_limits<c10::Half>::max());
  if (dtype == at::kBFloat16) largest = static_cast<double>(std::numeric_limits<c10::BFloat16>::max());
  return beta > 1.0 ? std::min(std::pow(largest / beta, 1.0 / (beta - 1.0)), largest) : largest;
}

template <typename acc_t>
LrnParams<acc_t> lrn_params(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  TORCH_CHECK(size > 0, "cnnfast.local_response_norm: size must be positive");
  check_floating(x, "input");
  const LrnGeometry geometry = lrn_geometry(x);
  LrnParams<acc_t> p;
  p.channels = x.size(1);
  p.channel_stride = geometry.inner;
  p.lane_stride = geometry.inner == 1 ? p.channels : 1;
  p.size = size;
  p.alpha_over_size = static_cast<acc_t>(alpha / static_cast<double>(size));
  p.beta = static_cast<acc_t>(beta);
  p.k = static_cast<acc_t>(k);
  p.nan_scale = static_cast<acc_t>(lrn_nan_scale(x.scalar_type(), beta));
  return p;
}

inline int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                           bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Rounded towards -infinity, so that a window larger than the padded input gives <= 0.
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  // As torch: with ceil_mode the last window must start inside the input or its left padding.
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

inline PoolGeometry pool_geometry(int64_t in_h, int64_t in_w, at::IntArrayRef kernel_size,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation) {
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "cnnfast.max_pool2d: kernel_size, stride, padding and dilation must have 2 values");
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(kernel_size[i] > 0 && stride[i] > 0 && dilation[i] > 0 && padding[i] >= 0 &&
                    padding[i] <= kernel_size[i] / 2,
                "cnnfast.max_pool2d: invalid window ", kernel_size, " stride ", stride,
                " padding ", padding, " dilation ", dilation);
  }
  PoolGeometry g;
  g.kernel_h = kernel_size[0];
  g.kernel_w = kernel_size[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.in_h = in_h;
  g.in_w = in_w;
  g.out_h = 0;
  g.out_w = 0;
  return g;
}

// Offsets fit a byte for windows of up to 256 elements (AlexNet's 3x3 uses 9 values).
inline at::ScalarType offset_dtype(const PoolGeometry& g) {
  return g.kernel_h * g.kernel_w <= 256 ? at::kByte : at::kInt;
}

// Runs body(offset_t{}) with the C++ type of an offsets tensor's dtype.
template <typename Body>
void dispatch_offset(at::ScalarType type, const Body& body) {
  if (type == at::kByte) {
    body(uint8_t{});
  } else {
    body(int32_t{});
  }
}

// Whether a and b step alike: the same strides but along dims of size 1, which never step.
inline bool same_stepping_strides(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) != 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// t with the strides torch's elementwise ops give a result shaped like `like`: empty_like's, which
// are like's own where it is dense, else dense in like's stride order (read off a meta tensor, no
// memory). A copy only where they step differently.
inline at::Tensor with_elementwise_strides(const at::Tensor& t, const at::Tensor& like) {
  const at::Tensor target =
      like.is_non_overlapping_and_dense() ? like : at::empty_like(like, like.options().device(at::kMeta));
  return same_stepping_strides(t, target) ? t : at::empty_like(like).copy_(t);
}

// What a binding needs to launch a kernel, prepared the same way for CPU and CUDA: inputs in the
// op's layout, outputs allocated in it, geometry, and the invariants a direct call could break.
//
// The output takes at::empty_like(input)'s strides, as torch's elementwise LRN gives them: x's own
// where x is dense (read where it lies), else dense in x's stride order (x is copied so first, by
// clone's preserve_format). cnnfast/ops/lrn.py's fake function is that empty_like. (Along a dim x
// is broadcast over, stride 0, x has no order: torch's LRN then follows its window sums' layout,
// an artefact of how it is composed, which this does not copy; the values are the same.)
struct LrnCall {
  at::Tensor x, grad_output, result;  // grad_output is undefined for the forward
  LrnGeometry geometry;
};

inline LrnCall prepare_local_response_norm(const at::Tensor& input, const at::Tensor* grad_output) {
  TORCH_CHECK(grad_output == nullptr || grad_output->sizes() == input.sizes(),
              "cnnfast.local_response_norm backward: grad_output and input shapes differ");
  LrnCall call;
  call.x = input.numel() == 0 || input.is_non_overlapping_and_dense() ? input : input.clone();
  if (grad_output != nullptr) {
    call.grad_output = same_stepping_strides(*grad_output, call.x) ? *grad_output
                                                                    : at::empty_like(call.x).copy_(*grad_output);
  }
  call.result = at::empty_like(call.x);  // x's strides: x is dense here
  call.geometry = lrn_geometry(call.x);
  return call;
}

struct MaxPoolCall {
  at::Tensor x, output, offsets;  // forward: 4-d input and its outputs
  at::Tensor grad_output, grad_input;  // backward: 4-d, with `offsets`
  PoolGeometry g;
  bool channels_last, unbatched;
  int64_t batch, channels;

  // Back to the caller's rank (3-d inputs are computed as a batch of one).
  at::Tensor shaped(const at::Tensor& t) const { return unbatched ? t.squeeze(0) : t; }
};

inline MaxPoolCall prepare_max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                              at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(input.dim() == 3 || input.dim() == 4, "cnnfast.max_pool2d: input must be 3-d or 4-d");
  check_floating(input, "input");
  const auto format = output_memory_format(input);
  MaxPoolCall call;
  call.unbatched = input.dim() == 3;
  call.channels_last = format == at::MemoryFormat::ChannelsLast;
  call.x = (call.unbatched ? input.unsqueeze(0) : input).contiguous(format);
  call.batch = call.x.size(0);
  call.channels = call.x.size(1);
  call.g = pool_geometry(call.x.size(2), call.x.size(3), kernel_size, stride, padding, dilation);
  PoolGeometry& g = call.g;
  g.out_h = pooled_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, ceil_mode);
  g.out_w = pooled_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, ceil_mode);
  TORCH_CHECK(g.out_h > 0 && g.out_w > 0, "cnnfast.max_pool2d: the window is larger than the padded input");
  call.output = at::empty({call.batch, call.channels, g.out_h, g.out_w}, call.x.options().memory_format(format));
  call.offsets = at::empty(call.output.sizes(), call.output.options().dtype(offset_dtype(g)).memory_format(format));
  return call;
}

inline MaxPoolCall prepare_max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& offsets,
                                               at::IntArrayRef input_hw, at::IntArrayRef kernel_size,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation) {
  TORCH_CHECK(grad_output.sizes() == offsets.sizes() && (offsets.dim() == 3 || offsets.dim() == 4),
              "cnnfast.max_pool2d backward: grad_output and offsets must have the output's shape");
  TORCH_CHECK(offsets.scalar_type() == at::kByte || offsets.scalar_type() == at::kInt,
              "cnnfast.max_pool2d backward: offsets must be uint8 or int32");
  TORCH_CHECK(input_hw.size() == 2, "cnnfast.max_pool2d backward: input_hw must have 2 values");
  check_floating(grad_output, "grad_output");
  const auto format = output_memory_format(offsets);
  MaxPoolCall call;
  call.unbatched = offsets.dim() == 3;
  call.channels_last = format == at::MemoryFormat::ChannelsLast;
  call.offsets = (call.unbatched ? offsets.unsqueeze(0) : offsets).contiguous(format);
  call.grad_output = (call.unbatched ? grad_output.unsqueeze(0) : grad_output).contiguous(format);
  call.batch = call.offsets.size(0);
  call.channels = call.offsets.size(1);
  call.g = pool_geometry(input_hw[0], input_hw[1], kernel_size, stride, padding, dilation);
  PoolGeometry& g = call.g;
  g.out_h = call.offsets.size(2);
  g.out_w = call.offsets.size(3);
  TORCH_CHECK(offset_dtype(g) == offsets.scalar_type(),
              "cnnfast.max_pool2d backward: offsets dtype does not match the window");
  TORCH_CHECK(g.out_h <= pooled_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h, true) &&
                  g.out_w <= pooled_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w, true),
              "cnnfast.max_pool2d backward: offsets do not come from this input size and window");
  call.grad_input = at::empty({call.batch, call.channels, g.in_h, g.in_w},
                              call.grad_output.options().memory_format(format));
  return call;
}

// BN-ReLU tensors are read in place when H and W merge into one stride (contiguous,
// channels_last, and channel slices of either); anything else is copied into the op's layout.
inline at::Tensor channel_viewable(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, "cnnfast.bn_relu: tensors must be 4-d, got ", t.dim(), "-d");
  if (t.size(2) <= 1 || t.size(3) <= 1 || t.stride(2) == t.size(3) * t.stride(3)) return t;
  return t.contiguous(output_memory_format(t));
}

inline ChannelGeometry channel_geometry(const at::Tensor& t) {
  ChannelGeometry g;
  g.batch = t.size(0);
  g.channels = t.size(1);
  g.spatial = t.size(2) * t.size(3);
  g.batch_stride = t.stride(0);
  g.channel_stride = t.stride(1);
  // With H or W of size 1 its stride is arbitrary: the other dim's stride steps through s.
  g.spatial_stride = t.size(3) > 1 ? t.stride(3) : t.stride(2);
  return g;
}

// Whether the kernels registered for CPU tensors accumulate fp32 in fp64, as torch's CPU BatchNorm
// does. The CUDA kernels accumulate it in fp32, and keep that rule where they are built for the CPU
// (tools/cuda_emulation, which defines CNNFAST_CUDA_EMULATION). cnnfast._C exports it to Python
// (cnnfast/_extension.py), whose op layer allocates the same per-channel tensors.
#if defined(CNNFAST_CUDA_EMULATION)
constexpr bool kCpuKernelsAccumulateFp32InFp64 = false;
#else
constexpr bool kCpuKernelsAccumulateFp32InFp64 = true;
#endif

// Per-channel tensors: `channels` values of the accumulation type, on the input's device. As torch's
// BatchNorm: fp64 for fp64 inputs, and for fp32 inputs on CPU; fp32 otherwise.
inline at::ScalarType bn_acc_type(const at::Tensor& input) {
  const auto type = input.scalar_type();
  const bool fp32_in_fp64 = type == at::kFloat && input.is_cpu() && kCpuKernelsAccumulateFp32InFp64;
  return type == at::kDouble || fp32_in_fp64 ? at::kDouble : at::kFloat;
}

inline at::Tensor per_channel(const at::Tensor& t, const at::Tensor& input, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(1), "cnnfast.bn_relu: ", name, " must have ",
              input.size(1), " values (one per channel), got shape ", t.sizes());
  TORCH_CHECK(t.device() == input.device(), "cnnfast.bn_relu: ", name, " is on ", t.device(),
              " but input is on ", input.device());
  return t.to(bn_acc_type(input)).contiguous();
}

// A per-channel result of a reduction (statistics, backward sums): `channels` values of the
// accumulation type on the input's device. Of no values, statistics are NaN (as torch) and sums 0.
inline at::Tensor per_channel_result(const at::Tensor& input) {
  return at::empty({input.size(1)}, input.options().dtype(bn_acc_type(input)));
}

// The same, from values the CPU kernels computed in double.
inline at::Tensor per_channel_result(const std::vector<double>& values, const at::Tensor& input) {
  return at::tensor(values, at::TensorOptions().dtype(at::kDouble)).to(bn_acc_type(input));
}

// The BN-ReLU ops' tensors, prepared the same way for CPU and CUDA.
struct BnReluCall {
  at::Tensor x, grad_output;   // readable through channel_geometry; grad_output may be undefined
  at::Tensor result;           // elementwise ops: a new tensor in output_memory_format(input)
  ChannelGeometry x_geometry, grad_geometry, result_geometry;
  // BN-add-ReLU: the residual added before the ReLU (undefined: none), and the backward's gradient
  // of it (undefined unless asked for; a new tensor in output_memory_format(input), as `result`).
  at::Tensor residual, grad_residual;
  ChannelGeometry residual_geometry, grad_residual_geometry;

  bool has_residual() const { return residual.defined(); }
};

inline BnReluCall prepare_bn_relu(const at::Tensor& input, const at::Tensor* grad_output, bool elementwise,
                                  const std::optional<at::Tensor>& residual = std::nullopt,
                                  bool residual_grad = false) {
  check_floating(input, "input");
  BnReluCall call;
  call.x = channel_viewable(input);
  call.x_geometry = channel_geometry(call.x);
  call.residual_geometry = call.grad_residual_geometry = call.x_geometry;  // placeholders until given
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == input.sizes(), "cnnfast.bn_add_relu: residual has shape ", residual->sizes(),
                " but input has ", input.sizes());
    TORCH_CHECK(residual->scalar_type() == input.scalar_type(), "cnnfast.bn_add_relu: residual is ",
                residual->scalar_type(), " but input is ", input.scalar_type());
    TORCH_CHECK(residual->device() == input.device(), "cnnfast.bn_add_relu: residual is on ", residual->device(),
                " but input is on ", input.device());
    call.residual = channel_viewable(*residual);
    call.residual_geometry = channel_geometry(call.residual);
    if (residual_grad) {
      call.grad_residual = at::empty(input.sizes(), input.options().memory_format(output_memory_format(input)));
      call.grad_residual_geometry = channel_geometry(call.grad_residual);
    }
  }
  if (grad_output != nullptr) {
    TORCH_CHECK(grad_output->sizes() == input.sizes(), "cnnfast.bn_relu backward: grad_output has shape ",
                grad_output->sizes(), " but input has ", input.sizes());
    TORCH_CHECK(grad_output->scalar_type() == input.scalar_type(), "cnnfast.bn_relu backward: grad_output is ",
                grad_output->scalar_type(), " but input is ", input.scalar_type());
    call.grad_output = channel_viewable(*grad_output);
    call.grad_geometry = channel_geometry(call.grad_output);
  }
  if (elementwise) {
    call.result = at::empty(input.sizes(), input.options().memory_format(output_memory_format(input)));
    call.result_geometry = channel_geometry(call.result);
  }
  return call;
}

}  // namespace cnnfast
