// AlexNet's stage after conv1 and conv2, y = max_pool2d(local_response_norm(relu(x))), the math
// shared by every C++ kernel. It is the two ops' math (lrn.h with the LoadRelu policy, and
// max_pool2d.h's window over a value source), put together so that neither relu(x) nor the LRN
// output is ever written to memory:
//
// - forward: the window max runs over LRN values computed on the fly from x (ReluLrnAt, one
//   value at a time: the CUDA kernel), or over a few rows of them in a small local buffer
//   (RowBuffer: the CPU kernel, whose LRN rows vectorise). Each value is rounded to scalar_t
//   before it is compared, as torch compares the LRN output it stored: argmax and ties are those
//   of torch's three ops (the LRN values themselves within its rounding, as the LRN op's);
// - kept for backward: x and the argmax as a uint8 offset inside the window (int32 beyond 256);
// - backward: the max-pool backward scatters grad_output into a temporary of x's size (exactly
//   as torch adds overlapping windows), then the LRN backward runs on relu(x) recomputed on load
//   and applies the ReLU's mask as it writes dx.
#pragma once

#include "lrn.h"
#include "max_pool2d.h"

namespace cnnfast {

// relu -> LRN of channel `c` at (ih, iw) of one image, rounded to scalar_t. `image` points at
// x's (n, 0, 0, 0); h_stride / w_stride step rows and columns, p.channel_stride channels.
template <typename Power, typename scalar_t>
struct ReluLrnAt {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* image;
  int64_t h_stride, w_stride, channel;
  LrnParams<acc_t> p;

  CNNFAST_HOST_DEVICE acc_t operator()(int64_t ih, int64_t iw) const {
    const scalar_t* column = image + ih * h_stride + iw * w_stride;
    acc_t window_sum;
    lrn_window_sum<scalar_t, acc_t, LoadRelu>(column, channel, 1, p, &window_sum);
    const acc_t v = lrn_load<scalar_t, acc_t, LoadRelu>(column, channel * p.channel_stride);
    return static_cast<acc_t>(static_cast<scalar_t>(lrn_normalize<Power>(v, window_sum, p)));
  }
};

// LRN values of channel `channel` held in a local buffer of rows [first_row, ...]: value (ih, iw)
// at (ih - first_row) * row_stride + channel * channel_stride + iw * w_stride.
template <typename scalar_t>
struct RowBuffer {
  const scalar_t* rows;
  int64_t first_row, row_stride, channel_stride, w_stride, channel;

  CNNFAST_HOST_DEVICE acc_type<scalar_t> operator()(int64_t ih, int64_t iw) const {
    return static_cast<acc_type<scalar_t>>(rows[(ih - first_row) * row_stride + channel * channel_stride +
                                                 iw * w_stride]);
  }
};

}  // namespace cnnfast
