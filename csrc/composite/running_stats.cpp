// cnnfast::_update_running_stats: BatchNorm's running-statistics update, once per training
// forward, as torch's BatchNorm does it: blended in the accumulation type of the batch statistics
// (fp64 on CPU for fp32 inputs), then stored in the buffers' dtype; running_var takes the
// unbiased variance. One op in place of nine small Python-side ops, for its per-call cost.
// _update_running_stats_counted takes the count as a device tensor (synchronised BatchNorm's
// count over all ranks), so that the host never waits for it.
#include <ATen/ATen.h>
#include <torch/library.h>

namespace {

void blend(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
           const at::Tensor& unbiased_var, double momentum) {
  running_mean.copy_(running_mean.to(mean.scalar_type()).mul_(1 - momentum).add_(mean, momentum));
  running_var.copy_(running_var.to(unbiased_var.scalar_type()).mul_(1 - momentum).add_(unbiased_var, momentum));
}

void update_running_stats(const at::Tensor& running_mean, const at::Tensor& running_var, const at::Tensor& mean,
                          const at::Tensor& var, double momentum, int64_t count) {
  TORCH_CHECK(count > 1, "cnnfast._update_running_stats: count must be at least 2 (the unbiased variance), got ",
              count);
  blend(running_mean, running_var, mean, var * (static_cast<double>(count) / static_cast<double>(count - 1)),
        momentum);
}

// The caller has made sure the count is at least 2 (cnnfast/ops/sync_batch_norm.py): checking it
// here would cost the host sync this op exists to avoid.
void update_running_stats_counted(const at::Tensor& running_mean, const at::Tensor& running_var,
                                  const at::Tensor& mean, const at::Tensor& var, double momentum,
                                  const at::Tensor& count) {
  TORCH_CHECK(count.numel() == 1, "cnnfast._update_running_stats_counted: count must have one element, got ",
              count.numel());
  const at::Tensor total = count.reshape({}).to(var.scalar_type());
  blend(running_mean, running_var, mean, var * (total / (total - 1)), momentum);
}

}  // namespace

TORCH_LIBRARY_IMPL(cnnfast, CompositeExplicitAutograd, m) {
  m.impl("_update_running_stats", &update_running_stats);
  m.impl("_update_running_stats_counted", &update_running_stats_counted);
}
