// cnnfast::_update_running_stats: BatchNorm's running-statistics update, once per training
// forward, as torch's BatchNorm does it: blended in the accumulation type of the batch statistics
// (fp64 on CPU for fp32 inputs), then stored in the buffers' dtype; running_var takes the
// unbiased variance. One op in place of nine small Python-side ops, for its per-call cost.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

void update_running_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count) {
  TORCH_CHECK(count > 1, "cnnfast._update_running_stats: count must be at least 2 (the unbiased variance), got ",
              count);
  const double unbiased = static_cast<double>(count) / static_cast<double>(count - 1);
  running_mean.copy_(running_mean.to(mean.scalar_type()).mul_(1 - momentum).add_(mean, momentum));
  running_var.copy_(running_var.to(var.scalar_type()).mul_(1 - momentum).add_(var * unbiased, momentum));
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CompositeExplicitAutograd, m) {
  m.impl("_update_running_stats", &update_running_stats);
}
