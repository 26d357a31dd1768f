"""BNAddReLU: a ResNet block's tail, relu(bn(x) + identity), keeping only its inputs for backward."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._batch_norm_step import batch_norm_across_ranks_step, batch_norm_step, sync_group
from cnnfast.nn._fusable import FUSABLE_NORM_TYPES, fusable_norm
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops import _checks, sync_batch_norm
from cnnfast.ops.bn_add_relu import bn_add_relu, check_identity


class BNAddReLU(NotScriptable, nn.BatchNorm2d):
    """nn.BatchNorm2d whose forward(input, identity=None) returns relu(bn(input) + identity), the
    tail of torchvision's BasicBlock and Bottleneck (identity None: relu(bn(input)), the stem).

    A subclass of nn.BatchNorm2d, so its parameters, buffers and state_dict keys are BatchNorm2d's
    (a torchvision block's `bn2` / `bn3` loads into it) and code that looks for BatchNorm layers
    finds it. Training and eval follow nn.BatchNorm2d exactly. Kept for backward: input, identity
    and per-channel statistics; never the output.

    cnnfast.nn.convert_sync_bn shares its batch statistics across ranks (its `process_group`); torch's
    nn.SyncBatchNorm.convert_sync_batchnorm would replace it with a plain SyncBatchNorm, without the
    add and the ReLU.
    """
    process_group = None  # set by cnnfast.nn.convert_sync_bn: the ranks sharing the batch statistics

    def forward(self, input: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        return bn_add_relu_module(self, input, identity)

    @classmethod
    def from_batch_norm(cls, bn: nn.BatchNorm2d) -> "BNAddReLU":
        """A BNAddReLU sharing `bn`'s parameters and buffers (not copies), in `bn`'s mode."""
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"BNAddReLU.from_batch_norm: bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(module, name, getattr(bn, name))
        # In bn's order (the state_dict's), absent ones (affine=False, no running stats) as None.
        for name, parameter in bn._parameters.items():
            module.register_parameter(name, parameter)
        for name, buffer in bn._buffers.items():
            module.register_buffer(name, buffer, persistent=name not in bn._non_persistent_buffers_set)
        module.train(bn.training)
        return module

    def extra_repr(self) -> str:
        return super().extra_repr() + ", then + identity and ReLU (output recomputed, never kept)"


def bn_add_relu_module(bn: nn.Module, input: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
    """relu(bn(input) + identity) through the bn_add_relu op with any BatchNorm2d's parameters and
    buffers, and nn.BatchNorm2d.forward's bookkeeping for the step (cnnfast/nn/_batch_norm_step.py).

    Run as the plain modules instead: a `bn` the op cannot stand in for (cnnfast/nn/_fusable.py: an
    nn.Identity left by cnnfast.fuse_for_inference, a FrozenBatchNorm2d, hooks), and an
    nn.SyncBatchNorm whose statistics are shared across ranks in training (the op has no
    all-reduce; the ReLU's output is then kept, as torch keeps it). A BNAddReLU sharing its
    statistics across ranks runs them in differentiable torch ops (sync_batch_norm.batch_norm_across_ranks)."""
    if fx_tracing():  # the torch.nn modules' ops, which torch.fx records
        if isinstance(bn, BNAddReLU):
            # Its BatchNorm is itself: no torch.nn module to record, and nn.BatchNorm2d's forward
            # checks its input's dims, which a traced tensor does not have.
            raise NotImplementedError("BNAddReLU cannot be traced by torch.fx.symbolic_trace; trace the model "
                                      "with nn.BatchNorm2d and nn.ReLU instead (cnnfast's models and "
                                      "cnnfast.convert's modules trace)")
        return torch.relu(bn(input) if identity is None else bn(input) + identity)
    # Named by bn's class: BNAddReLU, or the BatchNorm2d of a converted Sequential or block.
    _checks.check_module_input(input, type(bn).__name__)
    check_identity(input, identity, "BNAddReLU")
    own = isinstance(bn, BNAddReLU)  # called from its forward: its own hooks run around this call
    group = sync_batch_norm.group_name(sync_group(bn))
    if own and group:  # marked by convert_sync_bn: BatchNorm across the ranks, then add and ReLU
        out = batch_norm_across_ranks_step(bn, input, group)
        return torch.relu(out if identity is None else out + identity)
    if not (own or fusable_norm(bn)) or group:  # (never `own` here: a synchronised BNAddReLU ran above)
        out = bn(input)
        return torch.relu(out if identity is None else out + identity)
    step = batch_norm_step(bn)
    return bn_add_relu(input, identity, step.running_mean, step.running_var, bn.weight, bn.bias,
                       step.use_batch_stats, step.momentum, bn.eps)


FUSABLE_NORM_TYPES.add(BNAddReLU)
