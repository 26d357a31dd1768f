"""Batch statistics shared across the ranks of a torch.distributed process group (as
nn.SyncBatchNorm): the forward all-reduces counts, sums and squared deviations here; the backward
all-reduces BN's two gradient sums in C++ (csrc/composite/bn_relu_conv2d.cpp). Parameter
gradients stay local, as nn.SyncBatchNorm's (DistributedDataParallel averages them).

Ops name their group by string (torch's own mechanism for process groups in op schemas), so that
the group survives into the backward formula.
"""
from __future__ import annotations

import torch


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


def global_moments(mean: torch.Tensor, var: torch.Tensor, count: int, name: str):
    """(mean, biased variance, count) over every rank's batch, from each rank's own. Two
    all-reduces: the sums and counts give the global mean; each rank's squared deviations about
    it (exact, as in Chan et al.'s combination) then give the variance.

    The count comes back as a one-element tensor on mean's device, never read by the host: a copy
    to the host would wait for the GPU at every layer. Only a rank with fewer than two values of its
    own could be part of a group total of one (nn.BatchNorm2d's error), so only such a rank reads
    it; where the total is one every rank has at most one value, so all of them raise together."""
    group = _group(name)
    local_sum = mean * count if count > 0 else torch.zeros_like(mean)  # an empty batch adds nothing
    sums = torch.cat([local_sum, mean.new_full((1,), float(count))])
    torch.distributed.all_reduce(sums, group=group)
    total = sums[-1:]
    if count < 2 and int(total.item()) == 1:
        raise ValueError("Expected more than 1 value per channel when training, got one value per channel over all "
                         "ranks of the process group")
    global_mean = sums[:-1] / total
    deviations = (var + (mean - global_mean).square()) * count if count > 0 else torch.zeros_like(var)
    torch.distributed.all_reduce(deviations, group=group)
    return global_mean, deviations / total, total

