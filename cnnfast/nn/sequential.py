"""FusedSequential: an nn.Sequential that runs the runs of modules cnnfast has one op for through
that op, with the same children (so the same state_dict keys) as the Sequential it stands for."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._fusable import fusable_activation, fusable_avg_pool, fusable_conv, fusable_norm, has_hooks
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.nn.conv import bn_relu_conv_modules
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.residual import bn_add_relu_module
from cnnfast.ops.avg_pool2d import avg_pool2d
from cnnfast.ops.relu_lrn_max_pool2d import relu_lrn_max_pool2d


def _is_pool(module) -> bool:
    return type(module) in (nn.MaxPool2d, MaxPool2d) and not module.return_indices and not has_hooks(module)


def _window(modules: list[nn.Module], i: int):
    """modules[i], modules[i + 1], modules[i + 2], None past the end."""
    return (modules[i:i + 3] + [None, None, None])[:3]


def _run_length(modules: list[nn.Module], i: int, dims: int = 4) -> int:
    """How many modules from i one fused op covers (1: none) for an input of `dims` dims."""
    a, b, c = _window(modules, i)
    if fusable_norm(a) and fusable_activation(b):
        return 3 if c is not None and fusable_conv(c) else 2
    # The fused op takes [N, C, H, W] only: an unbatched [C, H, W] input runs the modules, as torch's.
    if dims == 4 and fusable_activation(a) and type(b) in (nn.LocalResponseNorm, LocalResponseNorm) \
            and not has_hooks(b) and _is_pool(c):
        return 3
    return 1


def fusable_runs(sequential: nn.Sequential) -> int:
    """The number of runs in `sequential` that FusedSequential runs through one of cnnfast's ops
    (an average pooling counts as one)."""
    modules, i, runs = list(sequential), 0, 0
    while i < len(modules):
        length = _run_length(modules, i)
        runs += length > 1 or fusable_avg_pool(modules[i])
        i += length
    return runs


class FusedSequential(NotScriptable, nn.Sequential):
    """Runs its children in order, as nn.Sequential, except (where the modules are plain torch ones
    without hooks: cnnfast/nn/_fusable.py):
    - BatchNorm2d -> ReLU -> Conv2d: one BN-ReLU-conv (keeps the BN's input; relu(bn(x)) recomputed);
    - BatchNorm2d -> ReLU otherwise: one BN-ReLU (keeps the BN's input, never the ReLU's output);
    - ReLU -> LocalResponseNorm -> MaxPool2d: one ReLU-LRN-max-pool (keeps the input and a uint8 argmax);
    - AvgPool2d (4-d input, no divisor_override): a pooling that keeps nothing (torch's keeps its
      input, though its backward reads only the shape: a DenseNet transition's convolution output).
    The plan is read from the children at each call, so replacing a child (fuse_for_inference
    replacing a folded BatchNorm with nn.Identity) is followed."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if fx_tracing():
            return nn.Sequential.forward(self, input)
        modules, i = list(self), 0
        while i < len(modules):
            length = _run_length(modules, i, input.dim())
            a, b, c = _window(modules, i)
            if length == 1 and fusable_avg_pool(a) and input.dim() == 4:
                input = avg_pool2d(input, a.kernel_size, a.stride, a.padding, a.ceil_mode, a.count_include_pad)
            elif length == 1:
                input = a(input)
            elif length == 3 and fusable_norm(a):
                input = bn_relu_conv_modules(a, c, input)
            elif fusable_norm(a):
                input = bn_add_relu_module(a, input)
            else:
                input = relu_lrn_max_pool2d(input, b.size, b.alpha, b.beta, b.k, c.kernel_size, c.stride, c.padding,
                                            c.dilation, c.ceil_mode)
            i += length
        return input

