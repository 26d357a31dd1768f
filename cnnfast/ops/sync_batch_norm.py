"""Batch statistics shared across the ranks of a torch.distributed process group (as
nn.SyncBatchNorm): the forward all-reduces counts, sums and squared deviations here; the backward
all-reduces BN's two gradient sums in C++ (csrc/composite/bn_relu_conv2d.cpp). Parameter
gradients stay local, as nn.SyncBatchNorm's (DistributedDataParallel averages them).

Ops name their group by string (torch's own mechanism for process groups in op schemas), so that
the group survives into the backward formula.
"""
from __future__ import annotations

import torch

from cnnfast.ops import _checks
from cnnfast.ops.batch_norm import values_per_channel


def group_name(process_group) -> str:
    """The name an op carries for `process_group`, or "" when there is nothing to synchronise
    (no group given, torch.distributed not initialised, or a group of one rank)."""
    if process_group is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return ""
    if torch.distributed.get_world_size(process_group) == 1:
        return ""
    return process_group.group_name


def _group(name: str):
    return torch.distributed.distributed_c10d._resolve_process_group(name)


def _all_reduce_in_place(tensor: torch.Tensor, group) -> torch.Tensor:
    torch.distributed.all_reduce(tensor, group=group)
    return tensor


def global_moments(mean: torch.Tensor, var: torch.Tensor, count: int, name: str, all_reduce=_all_reduce_in_place):
    """(mean, biased variance, count) over every rank's batch, from each rank's own. Two
    all-reduces: the sums and counts give the global mean; each rank's squared deviations about
    it (exact, as in Chan et al.'s combination) then give the variance. `all_reduce(tensor, group=)`
    returns the sum: torch.distributed's, in place, by default; torch.distributed.nn's to
    differentiate through the statistics.

    The count comes back as a one-element tensor on mean's device, never read by the host: a copy
    to the host would wait for the GPU at every layer. Only a rank with fewer than two values of its
    own could be part of a group total of one (nn.BatchNorm2d's error), so only such a rank reads
    it; where the total is one every rank has at most one value, so all of them raise together."""
    group = _group(name)
    local_sum = mean * count if count > 0 else torch.zeros_like(mean)  # an empty batch adds nothing
    sums = all_reduce(torch.cat([local_sum, mean.new_full((1,), float(count))]), group=group)
    total = sums[-1:]
    if count < 2 and int(total.item()) == 1:
        raise ValueError("Expected more than 1 value per channel when training, got one value per channel over all "
                         "ranks of the process group")
    global_mean = sums[:-1] / total
    deviations = (var + (mean - global_mean).square()) * count if count > 0 else torch.zeros_like(var)
    return global_mean, all_reduce(deviations, group=group) / total, total


def batch_norm_across_ranks(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                            weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float, eps: float,
                            name: str) -> torch.Tensor:
    """F.batch_norm in training with the statistics of every rank's batch together, as
    nn.SyncBatchNorm computes them, in differentiable torch ops: global_moments over
    torch.distributed.nn's all-reduce carries the gradients of the shared statistics back across
    the ranks. For the modules whose fused op has no all-reduce (BNAddReLU); unlike
    nn.SyncBatchNorm it also runs CPU tensors (gloo). The running statistics take the group's mean
    and unbiased variance, with `momentum` (the step's factor: cnnfast/nn/_batch_norm_step.py)."""
    from torch.distributed.nn.functional import all_reduce  # differentiable, unlike torch.distributed's

    _checks.check_batch_norm_eps(eps, True)
    dims = [0, *range(2, input.dim())]
    shape = [1, -1] + [1] * (input.dim() - 2)
    x = input.to(torch.float64 if input.dtype == torch.float64 else torch.float32)
    count = values_per_channel(x)  # N * H * W: numel // C divides by zero for no channels
    mean, var = (x.mean(dims), x.var(dims, unbiased=False)) if count else (x.new_zeros(x.shape[1]),) * 2
    mean, var, total = global_moments(mean, var, count, name, all_reduce)
    with torch.no_grad():
        if running_mean is not None:
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
        if running_var is not None:
            running_var.lerp_((var * total / (total - 1)).to(running_var.dtype), momentum)
    out = (x - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(input.dtype)
