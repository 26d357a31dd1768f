// CPU kernels of local response normalisation (the math: csrc/common/lrn.h).
#include "lrn_columns.h"

namespace cnnfast {
namespace {

at::Tensor local_response_norm_forward_kernel(const at::Tensor& input, int64_t size, double alpha,
                                              double beta, double k) {
  const LrnCall call = prepare_local_response_norm(input, nullptr);
  const at::Tensor& x = call.x;
  const at::Tensor& y = call.result;
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "local_response_norm_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const auto p = lrn_params<acc_t>(x, size, alpha, beta, k);
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    lrn_dispatch_power(p.beta, [&](auto power) {
      cpu::for_each_column_tile(x, [&](int64_t offset, int64_t lanes) {
        acc_t window_sum[cpu::kLrnTile];
        lrn_forward_columns<decltype(power)>(x_data + offset, y_data + offset, lanes, p, window_sum);
      });
    });
  });
  return y;
}

at::Tensor local_response_norm_backward_kernel(const at::Tensor& grad_output, const at::Tensor& input,
                                               int64_t size, double alpha, double beta, double k) {
  const LrnCall call = prepare_local_response_norm(input, &grad_output);
  const at::Tensor& x = call.x;
  const at::Tensor& dy = call.grad_output;
  const at::Tensor& dx = call.result;
  cpu::lrn_backward<LoadAsIs>(dy, x, dx, size, alpha, beta, k);
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CPU, m) {
  m.impl("local_response_norm", &local_response_norm_forward_kernel);
  m.impl("_local_response_norm_backward", &local_response_norm_backward_kernel);
}

}  // namespace cnnfast
