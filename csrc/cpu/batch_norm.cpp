// CPU kernels of the BN-ReLU and BN-add-ReLU ops (the math: csrc/common/batch_norm.h). BN-ReLU is
// BN-add-ReLU without a residual: one kernel each, the residual a compile-time branch.
//
// A tensor is walked one of two ways, whichever keeps the innermost loop on adjacent elements:
//  - planes: for each (n, c) the spatial run s = 0..S-1 (contiguous NCHW and its channel slices);
//  - rows:   for each (n, s) the channel run c = 0..C-1 (channels_last and its channel slices).
// Inner loops are written once for unit strides (so they vectorise) and once for any stride.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "../op_helpers.h"

namespace cnnfast {
namespace {

// Values per partial result: short enough to stay in L1 between the two passes of a block,
// long enough that combining partials costs nothing.
constexpr int64_t kBlock = 2048;
// Rows per block of the row walk (each row has C values).
constexpr int64_t kRowBlock = 64;
// Row chunks for the row walk's reductions: fixed, not per thread, so that the reduction order
// (and so the result) does not depend on the number of threads.
constexpr int64_t kRowChunks = 64;

bool rows_walk(std::initializer_list<const ChannelGeometry*> geometries) {
  for (const ChannelGeometry* g : geometries) {
    if (g->channel_stride != 1 || g->channels == 1) return false;
  }
  return true;
}

// As torch's CPU BatchNorm (at::acc_type<scalar_t, /*is_cuda=*/false>): fp32 inputs accumulate in
// fp64 on CPU, so statistics and gradient sums are as accurate as torch.nn's there. The
// per-channel tensors have this type too (bn_acc_type in csrc/op_helpers.h).
template <typename scalar_t>
using cpu_acc_type = std::conditional_t<std::is_same_v<scalar_t, float>, double, acc_type<scalar_t>>;

// The row walk of the reductions: kRowChunks fixed ranges of the (n, s) rows (fixed, so that the
// reduction order does not depend on the number of threads), each taken in blocks of up to
// kRowBlock rows: body(scratch, chunk, first_row, end_row), with one make_scratch() per task.
inline int64_t row_chunks(int64_t rows) { return std::min(kRowChunks, (rows + kRowBlock - 1) / kRowBlock); }

template <typename MakeScratch, typename Body>
void for_each_row_block(int64_t rows, const MakeScratch& make_scratch, const Body& body) {
  const int64_t chunks = row_chunks(rows);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t first = rows * chunk / chunks, last = rows * (chunk + 1) / chunks;
      for (int64_t r0 = first; r0 < last; r0 += kRowBlock) body(scratch, chunk, r0, std::min(last, r0 + kRowBlock));
    }
  });
}

// ---- batch statistics ---------------------------------------------------------------------

// Independent partial sums per lane: a float reduction only vectorises when its additions are
// independent (the compiler may not reassociate one running sum), and they shorten the
// dependency chain even where it does not.
constexpr int64_t kLanes = 8;

// Sum over i < count of f(i), in kLanes interleaved partial sums.
template <typename acc_t, typename F>
acc_t lane_sum(int64_t count, const F& f) {
  acc_t lanes[kLanes] = {};
  const int64_t whole = count - count % kLanes;
  for (int64_t i = 0; i < whole; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] += f(i + j);
  }
  acc_t total = 0;
  for (int64_t i = whole; i < count; ++i) total += f(i);
  for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

// Count, mean and m2 of x[0], x[stride], ... (count values), two passes over a run in cache.
template <typename scalar_t, typename acc_t>
Moments<acc_t> run_moments(const scalar_t* __restrict__ x, int64_t stride, int64_t count) {
  acc_t sum, m2;
  if (stride == 1) {
    sum = lane_sum<acc_t>(count, [&](int64_t i) { return static_cast<acc_t>(x[i]); });
  } else {
    sum = lane_sum<acc_t>(count, [&](int64_t i) { return static_cast<acc_t>(x[i * stride]); });
  }
  const acc_t mean = sum / static_cast<acc_t>(count);
  auto square = [&](acc_t v) { return (v - mean) * (v - mean); };
  if (stride == 1) {
    m2 = lane_sum<acc_t>(count, [&](int64_t i) { return square(static_cast<acc_t>(x[i])); });
  } else {
    m2 = lane_sum<acc_t>(count, [&](int64_t i) { return square(static_cast<acc_t>(x[i * stride])); });
  }
  return {static_cast<acc_t>(count), mean, m2};
}

Moments<double> widen(const Moments<float>& m) { return {m.count, m.mean, m.m2}; }
Moments<double> widen(const Moments<double>& m) { return m; }

// Planes: one channel per task, its planes in blocks of kBlock values, partials combined in double.
template <typename scalar_t>
void stats_planes(const scalar_t* x, const ChannelGeometry& g, std::vector<Moments<double>>& out) {
  using acc_t = cpu_acc_type<scalar_t>;
  at::parallel_for(0, g.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      Moments<double> total{0, 0, 0};
      for (int64_t n = 0; n < g.batch; ++n) {
        const scalar_t* plane = x + g.offset(n, c, 0);
        for (int64_t s = 0; s < g.spatial; s += kBlock) {
          const int64_t count = std::min(kBlock, g.spatial - s);
          total = combine_moments(total, widen(run_moments<scalar_t, acc_t>(plane + s * g.spatial_stride,
                                                                             g.spatial_stride, count)));
        }
      }
      out[c] = total;
    }
  });
}

// Rows: kRowChunks fixed ranges of (n, s) rows; each walks its rows in blocks of kRowBlock with
// per-channel vectors (two passes over the block), the chunks then combine in order.
template <typename scalar_t>
void stats_rows(const scalar_t* x, const ChannelGeometry& g, std::vector<Moments<double>>& out) {
  using acc_t = cpu_acc_type<scalar_t>;
  const int64_t C = g.channels;
  const int64_t rows = g.batch * g.spatial;
  const int64_t chunks = row_chunks(rows);
  std::vector<Moments<double>> partial(chunks * C, Moments<double>{0, 0, 0});
  struct Scratch {
    std::vector<acc_t> sum, m2;
  };
  for_each_row_block(rows, [&] { return Scratch{std::vector<acc_t>(C), std::vector<acc_t>(C)}; },
                     [&](Scratch& scratch, int64_t chunk, int64_t r0, int64_t r1) {
    std::vector<acc_t>& sum = scratch.sum;
    std::vector<acc_t>& m2 = scratch.m2;
    std::fill(sum.begin(), sum.end(), acc_t(0));
    std::fill(m2.begin(), m2.end(), acc_t(0));
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = x + g.offset(r / g.spatial, 0, r % g.spatial);
      for (int64_t c = 0; c < C; ++c) sum[c] += static_cast<acc_t>(row[c]);
    }
    const acc_t inverse = acc_t(1) / static_cast<acc_t>(r1 - r0);
    for (int64_t c = 0; c < C; ++c) sum[c] *= inverse;  // now the block mean
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = x + g.offset(r / g.spatial, 0, r % g.spatial);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t d = static_cast<acc_t>(row[c]) - sum[c];
        m2[c] += d * d;
      }
    }
    Moments<double>* target = partial.data() + chunk * C;
    for (int64_t c = 0; c < C; ++c) {
      target[c] = combine_moments(target[c], Moments<double>{static_cast<double>(r1 - r0), sum[c], m2[c]});
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    Moments<double> total{0, 0, 0};
    for (int64_t chunk = 0; chunk < chunks; ++chunk) total = combine_moments(total, partial[chunk * C + c]);
    out[c] = total;
  }
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_kernel(const at::Tensor& input) {
  const BnReluCall call = prepare_bn_relu(input, nullptr, false);
  const ChannelGeometry& g = call.x_geometry;
  if (g.per_channel() == 0) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {per_channel_result(input).fill_(nan), per_channel_result(input).fill_(nan)};
  }
  std::vector<Moments<double>> moments(g.channels);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "batch_norm_stats_cpu", [&] {
    const scalar_t* x = call.x.const_data_ptr<scalar_t>();
    if (rows_walk({&g})) {
      stats_rows(x, g, moments);
    } else {
      stats_planes(x, g, moments);
    }
  });
  std::vector<double> mean(g.channels), var(g.channels);
  for (int64_t c = 0; c < g.channels; ++c) {
    mean[c] = moments[c].mean;
    var[c] = moments[c].m2 / moments[c].count;
  }
  return {per_channel_result(mean, input), per_channel_result(var, input)};
}

// ---- elementwise: forward apply and the input gradient -------------------------------------

// Tensors an elementwise body walks together, in this order: x, the result, grad_output, the
// residual and its gradient. Those an op lacks take x's geometry as a placeholder (never read),
// so that the walk and the unit-stride test stay the same for every op.
enum RunTensor { kRunX, kRunOut, kRunGrad, kRunResidual, kRunGradResidual, kRunTensors };

// A run of elements for an elementwise body: a plane (one channel, stepping by each tensor's
// spatial stride) or a row (every channel of one position, unit channel strides). All
// geometries share sizes; the body takes its unit-stride loop when every stride is 1.
struct Run {
  int64_t offset[kRunTensors];  // of the run's first element in each tensor
  int64_t stride[kRunTensors];
  int64_t channel;  // plane walk: the channel; row walk: -1 (the channel is the run index)
  int64_t count;

  bool unit() const {
    for (int64_t s : stride) {
      if (s != 1) return false;
    }
    return true;
  }
};

template <typename Body>
void for_each_run(const ChannelGeometry* (&geometries)[kRunTensors], const Body& body) {
  const ChannelGeometry& xg = *geometries[kRunX];
  if (rows_walk({geometries[0], geometries[1], geometries[2], geometries[3], geometries[4]})) {
    at::parallel_for(0, xg.batch * xg.spatial, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / xg.spatial, s = r % xg.spatial;
        Run run{{}, {}, -1, xg.channels};
        for (int t = 0; t < kRunTensors; ++t) {
          run.offset[t] = geometries[t]->offset(n, 0, s);
          run.stride[t] = 1;
        }
        body(run);
      }
    });
    return;
  }
  at::parallel_for(0, xg.batch * xg.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n = p / xg.channels, c = p % xg.channels;
      Run run{{}, {}, c, xg.spatial};
      for (int t = 0; t < kRunTensors; ++t) {
        run.offset[t] = geometries[t]->offset(n, c, 0);
        run.stride[t] = geometries[t]->spatial_stride;
      }
      body(run);
    }
  });
}

// The elementwise ops compute in fp32 (fp64 for fp64 inputs), as torch's CPU BatchNorm applies its
// per-channel alpha and beta: only the reductions need fp64 for fp32 inputs.
// Copied into a vector here rather than converted by a torch op: these ops are small next to
// their per-call overhead at the channel counts of real networks.
template <typename elem_t>
std::vector<elem_t> channel_values(const at::Tensor& t, const at::Tensor& input, const char* name) {
  const at::Tensor values = per_channel(t, input, name);
  std::vector<elem_t> out(values.numel());
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "channel_values", [&] {
    const scalar_t* v = values.const_data_ptr<scalar_t>();
    for (size_t c = 0; c < out.size(); ++c) out[c] = static_cast<elem_t>(v[c]);
  });
  return out;
}

// z of one element: x * scale + shift, plus the residual's element (at `r`) with kResidual.
template <bool kResidual, typename acc_t, typename scalar_t>
inline acc_t z_value(acc_t x, acc_t scale, acc_t shift, const scalar_t* r) {
  if constexpr (kResidual) {
    return bn_add_affine(x, scale, shift, static_cast<acc_t>(*r));
  } else {
    return bn_affine(x, scale, shift);
  }
}

// The tensors of an elementwise op, each at its run's first element (nullptr where absent).
template <typename scalar_t>
struct RunPointers {
  const scalar_t* x;
  scalar_t* out;
  const scalar_t* grad;
  const scalar_t* residual;
  scalar_t* grad_residual;
};

// Calls element(i_x, i_out, i_grad, i_residual, i_grad_residual, v) for each element of the run:
// the indices of the element in each tensor, and v = load(channel), its channel's values (loaded
// once per plane, so that they stay in registers). Written once for unit strides (so that the
// loop vectorises) and once for any stride.
template <typename Load, typename Element>
inline void for_each_element(const Run& run, const Load& load, const Element& element) {
  if (run.channel < 0) {
    for (int64_t c = 0; c < run.count; ++c) element(c, c, c, c, c, load(c));
    return;
  }
  const auto v = load(run.channel);
  if (run.unit()) {
    for (int64_t i = 0; i < run.count; ++i) element(i, i, i, i, i, v);
  } else {
    const int64_t* s = run.stride;
    for (int64_t i = 0; i < run.count; ++i) {
      element(i * s[kRunX], i * s[kRunOut], i * s[kRunGrad], i * s[kRunResidual], i * s[kRunGradResidual], v);
    }
  }
}

template <typename scalar_t>
RunPointers<scalar_t> run_pointers(const Run& run, const RunPointers<scalar_t>& base) {
  const int64_t* o = run.offset;
  auto at = [](auto* p, int64_t offset) { return p == nullptr ? p : p + offset; };
  return {at(base.x, o[kRunX]), at(base.out, o[kRunOut]), at(base.grad, o[kRunGrad]),
          at(base.residual, o[kRunResidual]), at(base.grad_residual, o[kRunGradResidual])};
}

// out = relu(x * scale + shift [+ residual]).
template <bool kResidual, typename scalar_t, typename elem_t>
void bn_relu_run(const Run& run, const RunPointers<scalar_t>& base, const elem_t* __restrict__ scale,
                 const elem_t* __restrict__ shift) {
  const RunPointers<scalar_t> p = run_pointers(run, base);
  const scalar_t* __restrict__ x = p.x;
  const scalar_t* __restrict__ r = p.residual;
  scalar_t* __restrict__ y = p.out;
  const auto load = [&](int64_t c) { return std::array<elem_t, 2>{scale[c], shift[c]}; };
  for_each_element(run, load, [&](int64_t ix, int64_t iy, int64_t, int64_t ir, int64_t, std::array<elem_t, 2> v) {
    y[iy] = static_cast<scalar_t>(relu_value(z_value<kResidual>(static_cast<elem_t>(x[ix]), v[0], v[1], r + ir)));
  });
}

// dz and dx = dz * scale + x * coef_x + coef_c of one element (v: scale, shift, coef_x, coef_c).
template <bool kResidual, typename scalar_t, typename elem_t>
inline std::array<elem_t, 2> grad_values(scalar_t x, scalar_t grad, const scalar_t* r, const std::array<elem_t, 4>& v) {
  const elem_t xv = static_cast<elem_t>(x);
  const elem_t dz = relu_masked_grad(static_cast<elem_t>(grad), z_value<kResidual>(xv, v[0], v[1], r));
  return {dz, dz * v[0] + statistics_term(xv, v[2]) + v[3]};
}

// One row (every channel of one position, unit strides) as a loop over __restrict__ parameters:
// with five tensors and four per-channel arrays the compiler would otherwise have too many
// possible overlaps to check at run time, and leave the loop scalar (several times slower).
template <bool kResidual, bool kResidualGrad, typename scalar_t, typename elem_t>
void bn_relu_grad_row(int64_t count, const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                      const scalar_t* __restrict__ r, scalar_t* __restrict__ dx, scalar_t* __restrict__ dr,
                      const elem_t* __restrict__ scale, const elem_t* __restrict__ shift,
                      const elem_t* __restrict__ coef_x, const elem_t* __restrict__ coef_c) {
  for (int64_t c = 0; c < count; ++c) {
    const auto [dz, dxv] = grad_values<kResidual>(x[c], grad[c], r + c,
                                                  std::array<elem_t, 4>{scale[c], shift[c], coef_x[c], coef_c[c]});
    dx[c] = static_cast<scalar_t>(dxv);
    if constexpr (kResidualGrad) dr[c] = static_cast<scalar_t>(dz);
  }
}

// dx = dz * scale + x * coef_x + coef_c, and with kResidualGrad the residual's gradient dz (a
// compile-time switch, as kResidual).
template <bool kResidual, bool kResidualGrad, typename scalar_t, typename elem_t>
void bn_relu_grad_run(const Run& run, const RunPointers<scalar_t>& base, const elem_t* __restrict__ scale,
                      const elem_t* __restrict__ shift, const elem_t* __restrict__ coef_x,
                      const elem_t* __restrict__ coef_c) {
  const RunPointers<scalar_t> p = run_pointers(run, base);
  if (run.channel < 0) {
    bn_relu_grad_row<kResidual, kResidualGrad>(run.count, p.x, p.grad, p.residual, p.out, p.grad_residual, scale,
                                               shift, coef_x, coef_c);
    return;
  }
  const scalar_t* __restrict__ x = p.x;
  const scalar_t* __restrict__ grad = p.grad;
  const scalar_t* __restrict__ r = p.residual;
  scalar_t* __restrict__ dx = p.out;
  scalar_t* __restrict__ dr = p.grad_residual;
  const auto load = [&](int64_t c) { return std::array<elem_t, 4>{scale[c], shift[c], coef_x[c], coef_c[c]}; };
  for_each_element(run, load, [&](int64_t ix, int64_t id, int64_t ig, int64_t ir, int64_t idr,
                                  const std::array<elem_t, 4>& v) {
    const auto [dz, dxv] = grad_values<kResidual>(x[ix], grad[ig], r + ir, v);
    dx[id] = static_cast<scalar_t>(dxv);
    if constexpr (kResidualGrad) dr[idr] = static_cast<scalar_t>(dz);
  });
}

// The geometries of an elementwise call, in RunTensor order.
struct RunGeometries {
  const ChannelGeometry* list[kRunTensors];

  explicit RunGeometries(const BnReluCall& call, bool has_grad) {
    list[kRunX] = &call.x_geometry;
    list[kRunOut] = &call.result_geometry;
    list[kRunGrad] = has_grad ? &call.grad_geometry : &call.x_geometry;
    list[kRunResidual] = &call.residual_geometry;
    list[kRunGradResidual] = &call.grad_residual_geometry;
  }
};

template <typename scalar_t>
const scalar_t* optional_data(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr;
}

template <typename scalar_t>
scalar_t* optional_mutable_data(const at::Tensor& t) {
  return t.defined() ? t.mutable_data_ptr<scalar_t>() : nullptr;
}

// relu(input * scale + shift [+ residual]): bn_relu, and the forward of BN-add-ReLU.
at::Tensor bn_add_relu_apply_kernel(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
                                    const std::optional<at::Tensor>& residual) {
  const BnReluCall call = prepare_bn_relu(input, nullptr, true, residual);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_cpu", [&] {
    using elem_t = acc_type<scalar_t>;
    const std::vector<elem_t> scale_v = channel_values<elem_t>(scale, input, "scale");
    const std::vector<elem_t> shift_v = channel_values<elem_t>(shift, input, "shift");
    if (input.numel() == 0) return;
    const elem_t* sc = scale_v.data();
    const elem_t* sh = shift_v.data();
    const RunPointers<scalar_t> base{call.x.const_data_ptr<scalar_t>(), call.result.mutable_data_ptr<scalar_t>(),
                                     nullptr, optional_data<scalar_t>(call.residual), nullptr};
    RunGeometries geometries(call, false);
    if (call.has_residual()) {
      for_each_run(geometries.list, [&](const Run& run) { bn_relu_run<true>(run, base, sc, sh); });
    } else {
      for_each_run(geometries.list, [&](const Run& run) { bn_relu_run<false>(run, base, sc, sh); });
    }
  });
  return call.result;
}

at::Tensor bn_relu_kernel(const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift) {
  return bn_add_relu_apply_kernel(input, scale, shift, std::nullopt);
}

// (dx, d residual): d residual is undefined unless a residual is given and residual_grad is set.
std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward_kernel(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale, const at::Tensor& shift,
    const at::Tensor& coef_x, const at::Tensor& coef_c, const std::optional<at::Tensor>& residual,
    bool residual_grad) {
  const BnReluCall call = prepare_bn_relu(input, &grad_output, true, residual, residual_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_backward_cpu", [&] {
    using elem_t = acc_type<scalar_t>;
    const std::vector<elem_t> scale_v = channel_values<elem_t>(scale, input, "scale");
    const std::vector<elem_t> shift_v = channel_values<elem_t>(shift, input, "shift");
    const std::vector<elem_t> coef_x_v = channel_values<elem_t>(coef_x, input, "coef_x");
    const std::vector<elem_t> coef_c_v = channel_values<elem_t>(coef_c, input, "coef_c");
    if (input.numel() == 0) return;
    const elem_t* sc = scale_v.data();
    const elem_t* sh = shift_v.data();
    const elem_t* cx = coef_x_v.data();
    const elem_t* cc = coef_c_v.data();
    const RunPointers<scalar_t> base{call.x.const_data_ptr<scalar_t>(), call.result.mutable_data_ptr<scalar_t>(),
                                     call.grad_output.const_data_ptr<scalar_t>(),
                                     optional_data<scalar_t>(call.residual),
                                     optional_mutable_data<scalar_t>(call.grad_residual)};
    RunGeometries geometries(call, true);
    if (call.grad_residual.defined()) {
      for_each_run(geometries.list, [&](const Run& run) { bn_relu_grad_run<true, true>(run, base, sc, sh, cx, cc); });
    } else if (call.has_residual()) {
      for_each_run(geometries.list, [&](const Run& run) { bn_relu_grad_run<true, false>(run, base, sc, sh, cx, cc); });
    } else {
      for_each_run(geometries.list, [&](const Run& run) { bn_relu_grad_run<false, false>(run, base, sc, sh, cx, cc); });
    }
  });
  return {call.result, call.grad_residual};
}

at::Tensor bn_relu_backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& scale,
                                   const at::Tensor& shift, const at::Tensor& coef_x, const at::Tensor& coef_c) {
  return std::get<0>(bn_add_relu_backward_kernel(grad_output, input, scale, shift, coef_x, coef_c, std::nullopt,
                                                 false));
}

// ---- backward reductions: the ReLU mask and BN's two sums in one pass ----------------------

template <typename acc_t>
struct GradSums {
  acc_t dz, dz_xmu;
};

// Where a reduction reads the residual: its data (nullptr: none) and geometry.
template <typename scalar_t>
struct ResidualView {
  const scalar_t* data;
  const ChannelGeometry* geometry;
};

// Sums of dz and dz * (x - mean) over one run of one channel. In two stages per chunk: the masked
// values into a buffer (a loop without a reduction, which vectorises), then their lane sums.
template <bool kResidual, int64_t kUnit, typename scalar_t, typename acc_t>
GradSums<acc_t> reduce_run_strided(const scalar_t* __restrict__ x, int64_t xs, const scalar_t* __restrict__ grad,
                                   int64_t gs, const scalar_t* __restrict__ r, int64_t rs, int64_t count, acc_t mean,
                                   acc_t scale, acc_t shift) {
  if (kUnit) xs = gs = rs = 1;  // constant strides: the vectorisable loop
  constexpr int64_t kChunk = 256;
  acc_t dz[kChunk], dz_xmu[kChunk];
  GradSums<acc_t> sums{0, 0};
  for (int64_t base = 0; base < count; base += kChunk) {
    const int64_t n = std::min(kChunk, count - base);
    const scalar_t* __restrict__ xb = x + base * xs;
    const scalar_t* __restrict__ gb = grad + base * gs;
    const scalar_t* __restrict__ rb = kResidual ? r + base * rs : r;
    for (int64_t i = 0; i < n; ++i) {
      const acc_t xv = static_cast<acc_t>(xb[i * xs]);
      const acc_t z = z_value<kResidual>(xv, scale, shift, rb + i * rs);
      const acc_t d = relu_masked_grad(static_cast<acc_t>(gb[i * gs]), z);
      dz[i] = d;
      dz_xmu[i] = d * (xv - mean);
    }
    sums.dz += lane_sum<acc_t>(n, [&](int64_t i) { return dz[i]; });
    sums.dz_xmu += lane_sum<acc_t>(n, [&](int64_t i) { return dz_xmu[i]; });
  }
  return sums;
}

template <bool kResidual, typename scalar_t, typename acc_t>
GradSums<acc_t> reduce_run(const scalar_t* x, int64_t xs, const scalar_t* grad, int64_t gs, const scalar_t* r,
                           int64_t rs, int64_t count, acc_t mean, acc_t scale, acc_t shift) {
  if (xs == 1 && gs == 1 && (!kResidual || rs == 1)) {
    return reduce_run_strided<kResidual, 1>(x, xs, grad, gs, r, rs, count, mean, scale, shift);
  }
  return reduce_run_strided<kResidual, 0>(x, xs, grad, gs, r, rs, count, mean, scale, shift);
}

template <bool kResidual, typename scalar_t, typename acc_t>
void reduce_planes(const scalar_t* x, const ChannelGeometry& xg, const scalar_t* grad, const ChannelGeometry& gg,
                   const ResidualView<scalar_t>& res, const acc_t* mean, const acc_t* scale, const acc_t* shift,
                   double* sum_dz, double* sum_dz_xmu) {
  const ChannelGeometry& rg = *res.geometry;
  at::parallel_for(0, xg.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      double total_dz = 0, total_dz_xmu = 0;
      for (int64_t n = 0; n < xg.batch; ++n) {
        for (int64_t s = 0; s < xg.spatial; s += kBlock) {
          const scalar_t* r = kResidual ? res.data + rg.offset(n, c, s) : nullptr;
          const auto part = reduce_run<kResidual>(x + xg.offset(n, c, s), xg.spatial_stride,
                                                  grad + gg.offset(n, c, s), gg.spatial_stride, r, rg.spatial_stride,
                                                  std::min(kBlock, xg.spatial - s), mean[c], scale[c], shift[c]);
          total_dz += part.dz;
          total_dz_xmu += part.dz_xmu;
        }
      }
      sum_dz[c] = total_dz;
      sum_dz_xmu[c] = total_dz_xmu;
    }
  });
}

template <bool kResidual, typename scalar_t, typename acc_t>
void reduce_rows(const scalar_t* x, const ChannelGeometry& xg, const scalar_t* grad, const ChannelGeometry& gg,
                 const ResidualView<scalar_t>& res, const acc_t* mean, const acc_t* scale, const acc_t* shift,
                 double* sum_dz, double* sum_dz_xmu) {
  const ChannelGeometry& rg = *res.geometry;
  const int64_t C = xg.channels;
  const int64_t rows = xg.batch * xg.spatial;
  const int64_t chunks = row_chunks(rows);
  std::vector<double> partial(2 * chunks * C, 0.0);
  struct Scratch {
    std::vector<acc_t> dz, dz_xmu;
  };
  for_each_row_block(rows, [&] { return Scratch{std::vector<acc_t>(C), std::vector<acc_t>(C)}; },
                     [&](Scratch& scratch, int64_t chunk, int64_t r0, int64_t r1) {
    std::vector<acc_t>& block_dz = scratch.dz;
    std::vector<acc_t>& block_dz_xmu = scratch.dz_xmu;
    std::fill(block_dz.begin(), block_dz.end(), acc_t(0));
    std::fill(block_dz_xmu.begin(), block_dz_xmu.end(), acc_t(0));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / xg.spatial, s = r % xg.spatial;
      const scalar_t* xr = x + xg.offset(n, 0, s);
      const scalar_t* gr = grad + gg.offset(n, 0, s);
      const scalar_t* rr = kResidual ? res.data + rg.offset(n, 0, s) : nullptr;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t xv = static_cast<acc_t>(xr[c]);
        const acc_t z = z_value<kResidual>(xv, scale[c], shift[c], rr + c);
        const acc_t dz = relu_masked_grad(static_cast<acc_t>(gr[c]), z);
        block_dz[c] += dz;
        block_dz_xmu[c] += dz * (xv - mean[c]);
      }
    }
    double* target_dz = partial.data() + 2 * chunk * C;
    double* target_dz_xmu = target_dz + C;
    for (int64_t c = 0; c < C; ++c) {
      target_dz[c] += block_dz[c];
      target_dz_xmu[c] += block_dz_xmu[c];
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    double total_dz = 0, total_dz_xmu = 0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      total_dz += partial[2 * chunk * C + c];
      total_dz_xmu += partial[2 * chunk * C + C + c];
    }
    sum_dz[c] = total_dz;
    sum_dz_xmu[c] = total_dz_xmu;
  }
}

template <bool kResidual, typename scalar_t, typename acc_t>
void reduce_sums(const BnReluCall& call, const acc_t* mean, const acc_t* scale, const acc_t* shift, double* sum_dz,
                 double* sum_dz_xmu) {
  const scalar_t* x = call.x.const_data_ptr<scalar_t>();
  const scalar_t* grad = call.grad_output.const_data_ptr<scalar_t>();
  const ResidualView<scalar_t> res{optional_data<scalar_t>(call.residual), &call.residual_geometry};
  const auto run = rows_walk({&call.x_geometry, &call.grad_geometry, &call.residual_geometry})
                       ? reduce_rows<kResidual, scalar_t, acc_t>
                       : reduce_planes<kResidual, scalar_t, acc_t>;
  run(x, call.x_geometry, grad, call.grad_geometry, res, mean, scale, shift, sum_dz, sum_dz_xmu);
}

std::tuple<at::Tensor, at::Tensor> bn_add_relu_backward_reduce_kernel(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& scale,
    const at::Tensor& shift, const std::optional<at::Tensor>& residual) {
  const BnReluCall call = prepare_bn_relu(input, &grad_output, false, residual);
  const at::Tensor mean_c = per_channel(mean, input, "mean");
  const at::Tensor scale_c = per_channel(scale, input, "scale");
  const at::Tensor shift_c = per_channel(shift, input, "shift");
  const int64_t C = input.size(1);
  std::vector<double> sum_dz(C, 0.0), sum_dz_xmu(C, 0.0);
  if (input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "bn_add_relu_backward_reduce_cpu",
                                    [&] {
      using acc_t = cpu_acc_type<scalar_t>;
      const auto sums = call.has_residual() ? reduce_sums<true, scalar_t, acc_t> : reduce_sums<false, scalar_t, acc_t>;
      sums(call, mean_c.const_data_ptr<acc_t>(), scale_c.const_data_ptr<acc_t>(), shift_c.const_data_ptr<acc_t>(),
           sum_dz.data(), sum_dz_xmu.data());
    });
  }
  return {per_channel_result(sum_dz, input), per_channel_result(sum_dz_xmu, input)};
}

std::tuple<at::Tensor, at::Tensor> bn_relu_backward_reduce_kernel(const at::Tensor& grad_output,
                                                                  const at::Tensor& input, const at::Tensor& mean,
                                                                  const at::Tensor& scale, const at::Tensor& shift) {
  return bn_add_relu_backward_reduce_kernel(grad_output, input, mean, scale, shift, std::nullopt);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("batch_norm_stats", &batch_norm_stats_kernel);
  m.impl("bn_relu", &bn_relu_kernel);
  m.impl("_bn_relu_backward_reduce", &bn_relu_backward_reduce_kernel);
  m.impl("_bn_relu_backward", &bn_relu_backward_kernel);
  m.impl("_bn_add_relu_apply", &bn_add_relu_apply_kernel);
  m.impl("_bn_add_relu_backward_reduce", &bn_add_relu_backward_reduce_kernel);
  m.impl("_bn_add_relu_backward", &bn_add_relu_backward_kernel);
}

}  // namespace cnnfast
