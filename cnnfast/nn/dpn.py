"""Dual Path Networks' building blocks (Chen et al. 2017) with timm's parameter names: BnAct,
DualPathBlock and the stage runner `dual_path_stage` (memory-efficient: one shared buffer per
stage, cnnfast/ops/dual_path_stage.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnfast._backend import fx_tracing, resolve
from cnnfast.nn._batch_norm_step import batch_norm_step
from cnnfast.nn._fusable import fusable_norm, has_hooks, plain_conv
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.nn.conv import BNReLUConv2d
from cnnfast.ops import _checks
from cnnfast.ops.batch_norm import check_values_per_channel
from cnnfast.ops.bn_relu_conv2d import autocast_conv_parameters
from cnnfast.ops.dense_block import BatchNormArgs
from cnnfast.ops.dual_path_stage import DualPathStageConfig, dual_path_stage as dual_path_stage_op

# timm's DPN BatchNorms all use eps=1e-3 (the MXNet original's).
BN_EPS = 1e-3


class BnAct(NotScriptable, nn.Module):
    """relu(bn(x)): timm's BnAct, whose BatchNormAct2d keeps its keys under `bn`."""

    def __init__(self, in_chs: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(x))


def _bn_act_conv(in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int = 1) -> BNReLUConv2d:
    """timm's BnActConv2d (children `bn`, `conv`; padding as timm's create_conv2d: (k - 1) // 2)."""
    return BNReLUConv2d(in_chs, out_chs, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, eps=BN_EPS)


def _plain(unit: BNReLUConv2d, x: torch.Tensor) -> torch.Tensor:
    return unit.conv(F.relu(unit.bn(x)))


class DualPathBlock(NotScriptable, nn.Module):
    """timm's DualPathBlock (timm 1.0.x: one tensor in, one out): x = cat([residual, dense]) ->
    cat([residual + out1, dense, out2]), with the projection c1x1_w_s1 / c1x1_w_s2 in a stage's
    first block ('proj' / 'down'), c1x1_a, the grouped c3x3_b, and c1x1_c (or, with b=True, BnAct
    c1x1_c feeding the two convolutions c1x1_c1 and c1x1_c2).

    Called on its own, the block runs unit by unit, BN-ReLU-conv fused (memory_efficient=True) or
    as torch.nn does: a DPN runs its stages through `dual_path_stage`, one shared buffer each."""

    def __init__(self, in_chs: int, num_1x1_a: int, num_3x3_b: int, num_1x1_c: int, inc: int, groups: int,
                 block_type: str = "normal", b: bool = False, memory_efficient: bool = True):
        super().__init__()
        if block_type not in ("proj", "down", "normal"):
            raise ValueError(f"DualPathBlock: block_type must be 'proj', 'down' or 'normal', got {block_type!r}")
        self.num_1x1_c = num_1x1_c
        self.inc = inc
        self.groups = groups
        self.b = b
        self.key_stride = 2 if block_type == "down" else 1
        self.has_proj = block_type != "normal"
        self.memory_efficient = memory_efficient
        # timm's two names for the projection (stride 1 / 2) are kept: its checkpoints use them.
        self.c1x1_w_s1 = self.c1x1_w_s2 = None
        if self.has_proj:
            projection = _bn_act_conv(in_chs, num_1x1_c + 2 * inc, 1, self.key_stride)
            if self.key_stride == 2:
                self.c1x1_w_s2 = projection
            else:
                self.c1x1_w_s1 = projection
        self.c1x1_a = _bn_act_conv(in_chs, num_1x1_a, 1, 1)
        self.c3x3_b = _bn_act_conv(num_1x1_a, num_3x3_b, 3, self.key_stride, groups)
        self.c1x1_c1 = self.c1x1_c2 = None
        if b:
            self.c1x1_c = BnAct(num_3x3_b)
            self.c1x1_c1 = nn.Conv2d(num_3x3_b, num_1x1_c, kernel_size=1, bias=False)
            self.c1x1_c2 = nn.Conv2d(num_3x3_b, inc, kernel_size=1, bias=False)
        else:
            self.c1x1_c = _bn_act_conv(num_3x3_b, num_1x1_c + inc, 1, 1)

    @property
    def projection(self) -> BNReLUConv2d | None:
        return self.c1x1_w_s1 if self.c1x1_w_s1 is not None else self.c1x1_w_s2

    def _unit(self, unit: BNReLUConv2d, x: torch.Tensor) -> torch.Tensor:
        return unit(x) if self.memory_efficient else _plain(unit, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_s = self._unit(self.projection, x) if self.has_proj else x
        out = self._unit(self.c3x3_b, self._unit(self.c1x1_a, x))
        if self.b:
            out = self.c1x1_c(out)
            out1, out2 = self.c1x1_c1(out), self.c1x1_c2(out)
        else:
            out = self._unit(self.c1x1_c, out)
            out1, out2 = out[:, :self.num_1x1_c], out[:, self.num_1x1_c:]
        return torch.cat([x_s[:, :self.num_1x1_c] + out1, x_s[:, self.num_1x1_c:], out2], dim=1)

    def c1x1_c_weight(self) -> torch.Tensor:
        """c1x1_c's convolution weight; with b=True c1x1_c1's and c1x1_c2's stacked (one BN-ReLU
        feeds both, so they are one convolution to out1 and out2)."""
        if self.b:
            return torch.cat([self.c1x1_c1.weight, self.c1x1_c2.weight])
        return self.c1x1_c.conv.weight


def _unit_as_built(unit: nn.Module, kernel: int, stride: int = 1, groups: int = 1) -> bool:
    return (type(unit) is BNReLUConv2d and not has_hooks(unit) and unit.process_group is None
            and fusable_norm(unit.bn) and plain_conv(unit.conv, kernel, stride, (kernel - 1) // 2, groups))


def _block_as_built(block: nn.Module) -> bool:
    """Whether the stage op computes `block` exactly: a DualPathBlock whose units are still plain
    BatchNorm2d -> ReLU -> bias-free convolutions of the geometry it was built with, with no hooks
    (which would not run) and no statistics shared across ranks (convert_sync_bn)."""
    if type(block) is not DualPathBlock or has_hooks(block):
        return False
    s = block.key_stride
    units = [(block.c1x1_a, 1, 1, 1), (block.c3x3_b, 3, s, block.groups)]
    if block.has_proj:
        units.append((block.projection, 1, s, 1))
    if block.b:
        tail = block.c1x1_c
        tail_ok = (type(tail) is BnAct and not has_hooks(tail) and fusable_norm(tail.bn)
                   and plain_conv(block.c1x1_c1, 1) and plain_conv(block.c1x1_c2, 1))
    else:
        units.append((block.c1x1_c, 1, 1, 1))
        tail_ok = True
    return tail_ok and all(_unit_as_built(*unit) for unit in units)


def _block_by_block(blocks: list[DualPathBlock], input: torch.Tensor) -> torch.Tensor:
    for block in blocks:
        input = block(input)
    return input


def dual_path_stage(blocks: list[DualPathBlock], input: torch.Tensor, recompute_residual: bool = False) -> torch.Tensor:
    """A stage of DualPathBlocks (a 'proj' or 'down' block, then 'normal' ones) on `input`: the same
    result as running the blocks one after the other. Memory-efficient blocks run in one shared
    buffer (cnnfast/ops/dual_path_stage.py; recompute_residual=True keeps no residual for backward
    and replays them there); with the 'reference' backend, statistics shared across ranks
    (nn.SyncBatchNorm), memory_efficient=False or blocks changed since they were built (hooks,
    other modules), block by block."""
    if not blocks or not blocks[0].has_proj or any(block.has_proj for block in blocks[1:]):
        raise ValueError("dual_path_stage: blocks must be one 'proj' or 'down' block followed by 'normal' ones")
    if fx_tracing():  # block by block, as timm's DPN runs
        return _block_by_block(blocks, input)
    _checks.check_module_input(input, "dual_path_stage")
    in_channels = blocks[0].c1x1_a.bn.num_features
    if input.shape[1] != in_channels:
        raise _checks.InputError(f"dual_path_stage: expected input with {in_channels} channels, got {input.shape[1]}")
    # Each block takes what the one before gives: the residual path, and the dense path grown by inc
    # (a 'proj' block's projection starts it at 2 * inc).
    channels = blocks[0].num_1x1_c + 3 * blocks[0].inc
    for index, block in enumerate(blocks[1:], 1):
        if block.c1x1_a.bn.num_features != channels or block.num_1x1_c != blocks[0].num_1x1_c:
            raise _checks.InputError(f"dual_path_stage: block {index} takes {block.c1x1_a.bn.num_features} channels "
                                     f"({block.num_1x1_c} residual), but block {index - 1} gives {channels} "
                                     f"({blocks[0].num_1x1_c} residual)")
        channels += block.inc
    backend = resolve("bn_relu_conv2d", input) if blocks[0].memory_efficient else "reference"
    synchronised = any(isinstance(m, nn.SyncBatchNorm) and m.training for block in blocks for m in block.modules())
    # A block changed after construction (a hook, another module, convert_sync_bn) runs by itself.
    as_built = all(block.memory_efficient and _block_as_built(block) for block in blocks)
    # torch.jit.trace cannot record the stage's autograd.Function: traced, it runs block by block.
    if backend == "reference" or synchronised or not as_built or torch.jit.is_tracing():
        return _block_by_block(blocks, input)
    norms, parameters = [], []
    n, _, h, w = input.shape
    s = blocks[0].key_stride
    for index, block in enumerate(blocks):
        units = ([block.projection] if block.has_proj else []) + [block.c1x1_a, block.c3x3_b, block.c1x1_c]
        weights = [unit.conv.weight for unit in units[:-1]] + [block.c1x1_c_weight()]
        steps = []
        for unit in units:
            steps.append(BatchNormArgs(*batch_norm_step(unit.bn), unit.bn.eps))
            if index == 0:  # where the torch.nn blocks fail, before any later BatchNorm counts the step
                strided = unit is block.c1x1_c  # reads c3x3_b's output, past its stride
                shape = torch.Size((n, unit.bn.num_features, (h - 1) // s + 1, (w - 1) // s + 1)) if strided \
                    else input.shape
                check_values_per_channel(shape, steps[-1].use_batch_stats)
        norms.append(tuple(steps))
        for unit, weight in zip(units, weights):
            weight, _ = autocast_conv_parameters(weight, None, input.device.type)
            parameters += [unit.bn.weight, unit.bn.bias, weight]
    first = blocks[0]
    config = DualPathStageConfig(first.num_1x1_c, first.inc, first.groups, first.key_stride, tuple(norms), backend,
                                 recompute_residual)
    return dual_path_stage_op(input, config, parameters)
