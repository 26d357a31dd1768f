// The CPU's walk over LRN columns, shared by the LRN op (csrc/cpu/lrn.cpp) and the backward of the
// fused ReLU-LRN-max-pool (csrc/cpu/relu_lrn_max_pool2d.cpp). The math: csrc/common/lrn.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../op_helpers.h"

namespace cnnfast {
namespace cpu {

// Contiguous tensors are processed in tiles of this many spatial positions: every step of the
// channel walk then reads one short row per tensor, and the inner loops over the tile vectorise.
// The backward's ring (2 * min(size, C) * 64 accumulators) stays in L1 for AlexNet's size 5.
constexpr int64_t kLrnTile = 64;

// Calls body(column_offset, lanes) over every column tile of x's [outer][C][inner] walk
// (csrc/op_helpers.h LrnGeometry), in parallel.
template <typename Body>
void for_each_column_tile(const at::Tensor& x, const Body& body) {
  const LrnGeometry geometry = lrn_geometry(x);
  const int64_t channels = x.size(1);
  const int64_t outer = geometry.outer, inner = geometry.inner;
  if (inner == 1) {
    // Channels innermost (channels_last): each column is contiguous.
    at::parallel_for(0, outer, 256, [&](int64_t begin, int64_t end) {
      for (int64_t column = begin; column < end; ++column) body(column * channels, 1);
    });
    return;
  }
  const int64_t tiles = (inner + kLrnTile - 1) / kLrnTile;
  at::parallel_for(0, outer * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o = task / tiles;
      const int64_t first = (task % tiles) * kLrnTile;
      body(o * channels * inner + first, std::min(kLrnTile, inner - first));
    }
  });
}

// dx of the LRN of Load(x) (Load's mask applied), all three tensors in x's layout (LrnCall).
template <typename Load>
void lrn_backward(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dx, int64_t size, double alpha,
                  double beta, double k) {
  if (x.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "local_response_norm_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = lrn_params<acc_t>(x, size, alpha, beta, k);
    const int64_t ring = p.ring_length();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    lrn_dispatch_power(p.beta, [&](auto power) {
      for_each_column_tile(x, [&](int64_t offset, int64_t lanes) {
        // One allocation per column tile is small next to the C * lanes elements it walks.
        std::vector<acc_t> scratch(2 * kLrnTile + 2 * ring * lanes);
        LrnBackwardScratch<acc_t> s{scratch.data(), scratch.data() + kLrnTile, scratch.data() + 2 * kLrnTile,
                                    scratch.data() + 2 * kLrnTile + ring * lanes, lanes};
        lrn_backward_columns<decltype(power), scalar_t, acc_t, Load>(dy_data + offset, x_data + offset,
                                                                     dx_data + offset, lanes, p, s);
      });
    });
  });
}

}  // namespace cpu
}  // namespace cnnfast
