"""nn.BatchNorm2d.forward's bookkeeping, for modules that run a BatchNorm's math in their own ops."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class BatchNormStep(NamedTuple):
    running_mean: torch.Tensor | None  # the buffers to read (eval) or update (training); None: neither
    running_var: torch.Tensor | None
    use_batch_stats: bool
    momentum: float  # the update's factor this step (momentum=None: the cumulative average's)


def batch_norm_step(bn: nn.modules.batchnorm._BatchNorm) -> BatchNormStep:
    """What nn.BatchNorm2d.forward would use this step, counting the step in num_batches_tracked
    as it does: batch statistics in training (or without running statistics), running ones in eval."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return BatchNormStep(bn.running_mean if track else None, bn.running_var if track else None, use_batch_stats,
                         factor)


def batch_norm_across_ranks_step(bn: nn.modules.batchnorm._BatchNorm, input: torch.Tensor, group: str):
    """bn's training step with the statistics of every rank of the process group named `group`,
    in differentiable torch ops (cnnfast/ops/sync_batch_norm.py), counted as nn.BatchNorm2d counts it:
    for the modules whose fused op has no all-reduce."""
    from cnnfast.ops.sync_batch_norm import batch_norm_across_ranks

    step = batch_norm_step(bn)
    return batch_norm_across_ranks(input, step.running_mean, step.running_var, bn.weight, bn.bias, step.momentum,
                                   bn.eps, group)


def sync_group(bn: nn.modules.batchnorm._BatchNorm):
    """The process group whose ranks share `bn`'s batch statistics this step: an nn.SyncBatchNorm's
    (made by nn.SyncBatchNorm.convert_sync_batchnorm or cnnfast.nn.convert_sync_bn) in training,
    as nn.SyncBatchNorm synchronises, or that of a BNAddReLU marked by convert_sync_bn; None otherwise."""
    if not bn.training:
        return None
    if isinstance(bn, nn.SyncBatchNorm):
        return bn.process_group or torch.distributed.group.WORLD
    return getattr(bn, "process_group", None)
