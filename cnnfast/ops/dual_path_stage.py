"""A stage of a Dual Path Network (Chen et al. 2017) in one shared buffer, BN-ReLU recomputed in
backward: the DPN counterpart of cnnfast/ops/dense_block.py.

Each block of a stage reads cat([residual, dense]) and returns cat([residual + out1, dense, out2]):
the residual path (its first `residual_channels`) is summed, the dense path grows by `increment`
channels per block. A plain implementation concatenates the whole input again in every block and
keeps, per block, that concatenation and its BN-ReLU output for backward. Here:
- one buffer [N, R + (depth + 2) * inc, H, W] per stage is the stage's output, in timm's channel
  order: the last residual, the projection's 2 * inc dense channels, then each block's inc; the
  dense path is written into its own slices as it grows (no torch.cat, ever);
- a block's input cat([residual, dense]) is never formed by concatenation: the block's incoming
  residual is written into the buffer's first channels (where the stage's last residual ends up),
  so the input is the buffer's leading channels, one view, and c1x1_a is one fused unit over it
  (its BN-ReLU reads the view, its relu(bn(.)) is the usual temporary). In backward the buffer is
  the caller's output and stays untouched: one scratch copy of its dense channels takes each
  block's incoming residual in turn;
- BatchNorm's batch statistics of a dense channel are computed once, when it is written, and reused
  by every later block (only gamma/beta and the running buffers differ); the projection and c1x1_a
  of the first block share those of the stage's input;
- every unit is the bn_relu_conv2d op's kernels (relu(bn(.)) a temporary), and the backward walks
  the blocks in reverse with one gradient buffer of the stage's shape, running the op's backward
  (cnnfast::_bn_relu_conv2d_backward) per unit. It keeps the stage input, the buffer, the outputs
  of c1x1_a and c3x3_b, per-channel statistics and each block's incoming residual (the residual is
  summed, not concatenated, so later values do not contain earlier ones) unless recompute_residual
  is set: then the residuals are replayed in backward, one stage at a time, for the least memory;
- running statistics are updated once per forward.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from cnnfast.ops import _checks
from cnnfast.ops._higher_order import refuse_double_backward
from cnnfast.ops.batch_norm import acc_dtype, batch_stats, check_values_per_channel, values_per_channel
from cnnfast.ops.dense_block import BatchNormArgs, check_unit_dtypes

_ONE = [1, 1]


class DualPathStageConfig(NamedTuple):
    residual_channels: int  # timm's num_1x1_c (bw)
    increment: int  # timm's inc: dense channels added per block
    groups: int  # of the 3x3 convolutions
    stride: int  # of the first block's projection and 3x3 convolution: 1 ('proj') or 2 ('down')
    norms: tuple[tuple[BatchNormArgs, ...], ...]  # per block: (w, a, b, c) for the first, (a, b, c) after
    backend: str  # 'cpp' or 'triton'
    # True: the residuals are not kept but replayed in backward from the stage input and the kept
    # c3x3_b outputs (the projection and every c1x1_c run again: the same values, bit for bit).
    recompute_residual: bool = False
    keep_for_backward: bool = True  # False without autograd: nothing is kept


class _Unit(NamedTuple):
    """One BN-ReLU-conv: its BatchNorm this step, its parameters and its convolution's geometry."""
    norm: BatchNormArgs
    bn_weight: torch.Tensor | None
    bn_bias: torch.Tensor | None
    weight: torch.Tensor
    stride: int = 1
    padding: int = 0
    groups: int = 1

    def forward(self, x, mean, invstd, backend):
        return torch.ops.cnnfast.bn_relu_conv2d(x, mean, invstd, self.bn_weight, self.bn_bias, self.weight, None,
                                                [self.stride] * 2, [self.padding] * 2, _ONE, self.groups,
                                                self.norm.use_batch_stats, backend, "")

    def backward(self, grad, x, mean, invstd, backend, need_input: bool, needs):
        """(grad of x, of bn_weight, of bn_bias, of weight); `needs` says which parameters want one."""
        grad_x, grad_bn_weight, grad_bn_bias, grad_weight, _ = torch.ops.cnnfast._bn_relu_conv2d_backward(
            grad.to(self.weight.dtype), x, mean, invstd, self.bn_weight, self.bn_bias, self.weight, False,
            [self.stride] * 2, [self.padding] * 2, _ONE, self.groups, self.norm.use_batch_stats, backend, "",
            [need_input, self.bn_weight is not None and needs[0], self.bn_bias is not None and needs[1], needs[2],
             False])
        return grad_x, grad_bn_weight, grad_bn_bias, grad_weight


def dual_path_stage(input: torch.Tensor, config: DualPathStageConfig, parameters: list) -> torch.Tensor:
    """The stage's output [N, R + (depth + 2) * inc, H', W'] (H' = H / stride): timm's DPN stage.

    `parameters` holds BN weight, BN bias and conv weight of each unit in order: c1x1_w, c1x1_a,
    c3x3_b, c1x1_c for the first block, c1x1_a, c3x3_b, c1x1_c for the others (c1x1_c's weight is
    cat([c1x1_c1, c1x1_c2]) in the 'b' variant: the same BN-ReLU feeds both)."""
    expected = 3 * (len(config.norms) * 3 + 1)
    if len(parameters) != expected or len(config.norms[0]) != 4 or any(len(n) != 3 for n in config.norms[1:]):
        raise ValueError(f"dual_path_stage: expected {expected} parameters for {len(config.norms)} blocks, got "
                         f"{len(parameters)}")
    names = [f"block {block + 1}'s {unit}" for block, norms in enumerate(config.norms)
             for unit in (("c1x1_w", "c1x1_a", "c3x3_b", "c1x1_c") if block == 0 else ("c1x1_a", "c3x3_b", "c1x1_c"))]
    check_unit_dtypes(input, [norm for block in config.norms for norm in block], parameters, names,
                      "cnnfast.dual_path_stage")
    check_values_per_channel(input, any(norm.use_batch_stats for block in config.norms for norm in block))
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, *parameters))
    return _DualPathStageFunction.apply(input, config._replace(keep_for_backward=keep), *parameters)


def _units(config: DualPathStageConfig, parameters) -> list[list[_Unit]]:
    """Per block, its units with their geometry: (w, a, b, c) for the first, (a, b, c) after."""
    blocks, index = [], 0
    for block, norms in enumerate(config.norms):
        stride = config.stride if block == 0 else 1
        geometry = ([(stride, 0, 1)] if block == 0 else []) + [(1, 0, 1), (stride, 1, config.groups), (1, 0, 1)]
        units = []
        for norm, (unit_stride, padding, groups) in zip(norms, geometry):
            units.append(_Unit(norm, *parameters[index:index + 3], unit_stride, padding, groups))
            index += 3
        blocks.append(units)
    return blocks


def _stats(x, norm: BatchNormArgs, backend):
    if not norm.use_batch_stats:
        return None, None
    check_values_per_channel(x, True)  # as nn.BatchNorm2d, also past a strided convolution
    return batch_stats(x, backend)


def _replay_residuals(input, blocks, saved_norms, bottlenecks, config: DualPathStageConfig) -> list:
    """Each block's incoming residual (None for the first), computed as the forward computed it."""
    r, backend = config.residual_channels, config.backend
    residuals = [None]
    residual = blocks[0][0].forward(input, *saved_norms[0:2], backend)[:, :r]  # the projection's
    norm_index = 6  # of c1x1_c's (mean, invstd) in the first block; each later block has three units
    for block in range(len(blocks) - 1):
        c = blocks[block][-1].forward(bottlenecks[block], *saved_norms[norm_index:norm_index + 2], backend)
        residual = residual + c[:, :r]
        residuals.append(residual)
        norm_index += 6
    return residuals


class _DualPathStageFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, config: DualPathStageConfig, *parameters):
        r, inc, backend = config.residual_channels, config.increment, config.backend
        depth = len(config.norms)
        dtype = acc_dtype(input, backend)
        blocks = _units(config, parameters)
        need_dense_stats = any(block[0].norm.use_batch_stats for block in blocks[1:])
        saved_norms, kept = [], []  # (mean, invstd) of every unit; per block its incoming residual, a and b
        buffer = dense_means = dense_vars = residual = None
        for block, units in enumerate(blocks):
            if block == 0:
                unit_w, unit_a, unit_b, unit_c = units
                x_mean, x_var = (None, None)
                if unit_w.norm.use_batch_stats or unit_a.norm.use_batch_stats:  # one pass for both
                    x_mean, x_var = batch_stats(input, backend)
                norm_w = unit_w.norm.normalise(x_mean, x_var, values_per_channel(input), dtype)
                norm_a = unit_a.norm.normalise(x_mean, x_var, values_per_channel(input), dtype)
                projection = unit_w.forward(input, *norm_w, backend)
                a = unit_a.forward(input, *norm_a, backend)
                saved_norms += [*norm_w, *norm_a]
                incoming = None
            else:
                unit_a, unit_b, unit_c = units
                dense = buffer[:, r:r + (2 + block) * inc]
                mean, var = None, None
                if unit_a.norm.use_batch_stats:
                    residual_mean, residual_var = batch_stats(residual, backend)
                    mean = torch.cat([residual_mean, dense_means[:dense.shape[1]]])
                    var = torch.cat([residual_var, dense_vars[:dense.shape[1]]])
                norm_a = unit_a.norm.normalise(mean, var, values_per_channel(residual), dtype)
                buffer[:, :r].copy_(residual)  # the block's input is now the buffer's leading channels
                a = unit_a.forward(buffer[:, :r + dense.shape[1]], *norm_a, backend)
                saved_norms += list(norm_a)
                incoming = residual
            norm_b = unit_b.norm.normalise(*_stats(a, unit_b.norm, backend), values_per_channel(a), dtype)
            b = unit_b.forward(a, *norm_b, backend)
            norm_c = unit_c.norm.normalise(*_stats(b, unit_c.norm, backend), values_per_channel(b), dtype)
            c = unit_c.forward(b, *norm_c, backend)
            saved_norms += [*norm_b, *norm_c]
            if block == 0:
                n, _, h, w = c.shape
                buffer = torch.empty((n, r + (depth + 2) * inc, h, w), dtype=c.dtype, device=c.device,
                                     memory_format=_checks.output_memory_format(c))
                buffer[:, r:r + 2 * inc].copy_(projection[:, r:])
                residual = projection[:, :r] + c[:, :r]
                del projection
                dense_means = torch.empty((depth + 2) * inc, dtype=dtype, device=c.device)
                dense_vars = torch.empty_like(dense_means)
            else:
                residual = residual + c[:, :r]
            buffer[:, r + (2 + block) * inc:r + (3 + block) * inc].copy_(c[:, r:])
            del c
            # Dense channels written by this block: the first also wrote the projection's.
            written = slice(0 if block == 0 else (2 + block) * inc, (3 + block) * inc)
            # The last block's dense channels feed no block of this stage.
            if need_dense_stats and block + 1 < depth:
                dense_means[written], dense_vars[written] = batch_stats(
                    buffer[:, r + written.start:r + written.stop], backend)
            if config.keep_for_backward:
                kept += [None if config.recompute_residual else incoming, a, b]
        buffer[:, :r].copy_(residual)
        ctx.config = config
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, buffer, *parameters, *saved_norms, *kept)
        ctx.num_parameters = len(parameters)
        return buffer

    @staticmethod
    def backward(ctx, grad_output):
        if grad_output is None:
            return (None,) * (2 + ctx.num_parameters)
        refuse_double_backward()
        config = ctx.config
        r, inc, backend = config.residual_channels, config.increment, config.backend
        input, buffer, *saved = ctx.saved_tensors
        parameters = saved[:ctx.num_parameters]
        saved_norms = saved[ctx.num_parameters:2 * ctx.num_parameters // 3 + ctx.num_parameters]
        kept = saved[len(parameters) + len(saved_norms):]
        blocks = _units(config, parameters)
        needs = ctx.needs_input_grad[2:]
        # d(loss)/d(dense channels), completed block by block in reverse; the residual's gradient
        # passes through every block's sum unchanged and gathers each block's c1x1_a term.
        memory_format = _checks.output_memory_format(buffer)
        grad_buffer = grad_output.clone(memory_format=memory_format)
        scratch = None  # a block's input, cat([incoming residual, dense channels]), for c1x1_a
        # c1x1_c's output gradient: the residual's (accumulated here, in place) then the block's new
        # dense channels (copied in per block), so that no block concatenates the two.
        grad_c = torch.empty_like(grad_buffer[:, :r + inc], memory_format=memory_format)
        grad_c[:, :r].copy_(grad_buffer[:, :r])
        grad_residual = grad_c[:, :r]
        grad_parameters = [None] * len(parameters)
        grad_input = None
        incomings = list(kept[0::3])
        if config.recompute_residual:
            incomings = _replay_residuals(input, blocks, saved_norms, kept[2::3], config)
        for block in reversed(range(len(blocks))):
            units = blocks[block]
            # Index of c1x1_a's first parameter (the first block's projection comes before it).
            first = 9 * block + 3
            norms = saved_norms[2 * first // 3 - 2 * (block == 0):2 * first // 3 + 6]
            _, a, b = kept[3 * block:3 * block + 3]
            incoming = incomings.pop()
            unit_a, unit_b, unit_c = units[-3:]
            new = slice(r + (2 + block) * inc, r + (3 + block) * inc)
            grad_c[:, r:].copy_(grad_buffer[:, new])
            grad_b, *grads_c = unit_c.backward(grad_c, b, *norms[-2:], backend, True, needs[first + 6:])
            grad_a, *grads_b = unit_b.backward(grad_b, a, *norms[-4:-2], backend, True, needs[first + 3:])
            del grad_b
            mean_a, invstd_a = norms[-6:-4]
            needs_a = needs[first:]
            if block > 0:
                if scratch is None:  # the dense channels every earlier block reads, copied once
                    scratch = torch.empty_like(buffer[:, :new.start], memory_format=memory_format)
                    scratch[:, r:].copy_(buffer[:, r:new.start])
                scratch[:, :r].copy_(incoming)
                grad_x_a, *grads_a = unit_a.backward(grad_a, scratch[:, :new.start], mean_a, invstd_a, backend,
                                                     True, needs_a)
                grad_buffer[:, r:new.start] += grad_x_a[:, r:]
                grad_residual += grad_x_a[:, :r]
                del grad_x_a
            else:
                need_input = ctx.needs_input_grad[0]
                grad_x_a, *grads_a = unit_a.backward(grad_a, input, mean_a, invstd_a, backend, need_input, needs_a)
                unit_w = units[0]
                grad_projection = torch.cat([grad_residual, grad_buffer[:, r:r + 2 * inc]], 1)
                grad_x_w, *grads_w = unit_w.backward(grad_projection, input, *norms[:2], backend, need_input,
                                                     needs[:3])
                grad_parameters[:3] = grads_w
                grad_input = grad_x_a + grad_x_w if need_input else None
            del grad_a
            grad_parameters[first:first + 9] = [*grads_a, *grads_b, *grads_c]
        return (grad_input, None, *grad_parameters)
