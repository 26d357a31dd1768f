// Torch-side helpers shared by the CPU and CUDA bindings: memory-format choice, argument
// invariants, and the translation of tensors and arguments into the torch-free structs of
// csrc/common. User-facing argument checks live once, in cnnfast/ops/_checks.py; the checks here
// only keep a direct torch.ops call from reading out of bounds.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/lrn.h"
#include "common/max_pool2d.h"

namespace cnnfast {

// The layout an op computes in and returns: channels_last for a 4-d channels_last input,
// contiguous otherwise (cnnfast/ops/_checks.py `output_memory_format` mirrors this for the fake
// functions).
inline at::MemoryFormat output_memory_format(const at::Tensor& x) {
  if (x.dim() == 4 && !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "cnnfast: ", name,
              " must be a floating-point tensor, got ", t.scalar_type());
}

// LRN works on [N, C, S]: S is the product of the trailing dims. For a contiguous tensor the
// lanes (spatial positions) are adjacent; for channels_last the channels are.
template <typename acc_t>
LrnParams<acc_t> lrn_params(const at::Tensor& x, int64_t size, double alpha, double beta, double k) {
  TORCH_CHECK(x.dim() >= 3, "cnnfast.local_response_norm: input must have 3 or more dims");
  TORCH_CHECK(size > 0, "cnnfast.local_response_norm: size must be positive");
  check_floating(x, "input");
  const int64_t channels = x.size(1);
  const int64_t spatial = x.numel() / std::max<int64_t>(1, x.size(0) * channels);
  const bool channels_last = output_memory_format(x) == at::MemoryFormat::ChannelsLast;
  LrnParams<acc_t> p;
  p.channels = channels;
  p.channel_stride = channels_last ? 1 : spatial;
  p.lane_stride = channels_last ? channels : 1;
  p.size = size;
  p.alpha_over_size = static_cast<acc_t>(alpha / static_cast<double>(size));
  p.beta = static_cast<acc_t>(beta);
  p.k = static_cast<acc_t>(k);
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

}  // namespace cnnfast
