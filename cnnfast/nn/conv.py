"""BNReLUConv2d: nn.Sequential(nn.BatchNorm2d, nn.ReLU, nn.Conv2d) as one module that keeps only its
input (and per-channel statistics) for backward."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._batch_norm_step import batch_norm_across_ranks_step, batch_norm_step, sync_group
from cnnfast.nn._fusable import fusable_conv, fusable_norm, has_hooks
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.nn.residual import BNAddReLU
from cnnfast.ops import _checks, sync_batch_norm
from cnnfast.ops.bn_relu_conv2d import bn_relu_conv2d


class BNReLUConv2d(NotScriptable, nn.Module):
    """conv(relu(bn(x))), the pre-activation unit of DenseNet, DPN and pre-activation ResNets.

    Its parameters live in `bn` (an nn.BatchNorm2d) and `conv` (an nn.Conv2d), so its state_dict
    reads like theirs (`bn.weight`, `bn.running_mean`, `conv.weight`, ...). Training and eval follow
    nn.BatchNorm2d exactly: batch statistics in training, running statistics (updated once per
    forward, with momentum=None a cumulative average) in eval, or batch statistics always when
    track_running_stats=False.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.bn = nn.BatchNorm2d(in_channels, eps, momentum, affine, track_running_stats, **factory)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                              **factory)
        self._check_modules(self.bn, self.conv)
        # A torch.distributed process group whose ranks share the batch statistics (set by
        # convert_sync_bn); None: this rank's batch alone.
        self.process_group = None

    @staticmethod
    def _check_modules(bn: nn.Module, conv: nn.Module) -> None:
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"BNReLUConv2d: bn must be an nn.BatchNorm2d, got {type(bn).__name__}")
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"BNReLUConv2d: conv must be an nn.Conv2d, got {type(conv).__name__}")
        if bn.num_features != conv.in_channels:
            raise ValueError(f"BNReLUConv2d: bn has {bn.num_features} features but conv takes "
                             f"{conv.in_channels} input channels")

    @classmethod
    def from_modules(cls, bn: nn.BatchNorm2d, conv: nn.Conv2d) -> "BNReLUConv2d":
        """Wraps existing modules: their parameters and buffers are shared, not copied."""
        cls._check_modules(bn, conv)
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.bn = bn
        module.conv = conv
        module.process_group = None
        return module

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bn, conv = self.bn, self.conv
        if not fx_tracing():
            _checks.check_module_input(input, "BNReLUConv2d")
        # As nn.SyncBatchNorm: statistics are shared only in training mode (an evaluation on one rank
        # must not wait for the others).
        return bn_relu_conv_modules(bn, conv, input, self._sync_group() if bn.training else None)

    def _sync_group(self):
        # Set by convert_sync_bn, or a bn converted by nn.SyncBatchNorm.convert_sync_batchnorm.
        return self.process_group if self.process_group is not None else sync_group(self.bn)

    def extra_repr(self) -> str:
        sync = ", statistics synchronised across ranks" if self.process_group is not None else ""
        return f"relu(bn(x)) recomputed in backward{sync}"


def bn_relu_conv_modules(bn: nn.Module, conv: nn.Conv2d, input: torch.Tensor, process_group=None) -> torch.Tensor:
    """conv(relu(bn(input))) through bn_relu_conv2d with the modules' parameters and buffers, and
    nn.BatchNorm2d.forward's bookkeeping for the step (cnnfast/nn/_batch_norm_step.py). Modules
    the op cannot stand in for (cnnfast/nn/_fusable.py: an nn.Identity left by
    cnnfast.fuse_for_inference, a FrozenBatchNorm2d, a conv with hooks or reflect padding, ...)
    run as the plain modules. Batch statistics are shared across the ranks of `process_group`;
    None: those of an nn.SyncBatchNorm `bn` in training (cnnfast/nn/_batch_norm_step.py sync_group),
    or none."""
    if fx_tracing():  # the torch.nn modules, which torch.fx records
        if process_group is not None and bn.training and not isinstance(bn, nn.SyncBatchNorm):
            # Statistics shared across ranks by convert_sync_bn's mark, which a plain BatchNorm
            # module does not do: the traced graph would silently use each rank's own.
            raise NotImplementedError("a BNReLUConv2d sharing batch statistics across ranks (convert_sync_bn) "
                                      "cannot be traced by torch.fx.symbolic_trace in training; trace it in eval "
                                      "mode, or trace the model before convert_sync_bn")
        return conv(torch.relu(bn(input)))
    if not (fusable_norm(bn) and fusable_conv(conv)):
        return conv(torch.relu(_batch_norm_unfused(bn, input, process_group)))
    _checks.check_module_input(input, type(bn).__name__)  # a converted Sequential's BatchNorm2d, say
    if process_group is None:
        process_group = sync_group(bn)
    step = batch_norm_step(bn)
    return bn_relu_conv2d(input, step.running_mean, step.running_var, bn.weight, bn.bias, conv.weight, conv.bias,
                          conv.stride, conv.padding, conv.dilation, conv.groups, step.use_batch_stats, step.momentum,
                          bn.eps, process_group)


def _batch_norm_unfused(bn: nn.Module, input: torch.Tensor, process_group) -> torch.Tensor:
    """bn(input), with the statistics of every rank of `process_group` where convert_sync_bn's mark
    asks for them and `bn` (not an nn.SyncBatchNorm, which shares its own) would use only this rank's."""
    group = sync_batch_norm.group_name(process_group)
    if not (group and bn.training and isinstance(bn, nn.modules.batchnorm._BatchNorm)
            and not isinstance(bn, nn.SyncBatchNorm)):
        return bn(input)
    if not fusable_norm(bn):
        # A hook or a subclass's forward expects bn itself to run, and bn would use this rank's
        # batch alone: neither can be honoured silently.
        raise NotImplementedError(f"BNReLUConv2d: its bn ({type(bn).__name__}"
                                  f"{' with hooks' if has_hooks(bn) else ''}) cannot share batch statistics across "
                                  "ranks (convert_sync_bn); remove the hooks, or make bn an nn.SyncBatchNorm")
    return batch_norm_across_ranks_step(bn, input, group)


def convert_sync_bn(module: nn.Module, process_group=None) -> nn.Module:
    """In the spirit of nn.SyncBatchNorm.convert_sync_batchnorm: every BNReLUConv2d and BNAddReLU in
    `module` shares its batch statistics across the ranks of `process_group` (default: the whole
    world), and every other BatchNorm layer becomes an nn.SyncBatchNorm. Converts in place where it can
    and returns the module (a new one when `module` is itself a plain BatchNorm layer)."""
    if process_group is None:
        process_group = torch.distributed.group.WORLD
    if isinstance(module, (BNReLUConv2d, BNAddReLU)):  # they synchronise their own statistics
        module.process_group = process_group
        return module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        converted = convert_sync_bn(child, process_group)
        if converted is not child:
            setattr(module, name, converted)
    return module
