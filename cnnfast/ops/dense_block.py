"""A DenseNet dense block in one shared buffer, BN-ReLU recomputed in backward.

A naive block concatenates all earlier features before every layer and keeps each concatenation
and its BN-ReLU output for backward: memory quadratic in depth. Here:
- one buffer [N, C0 + L*k, H, W] holds the block input and every layer's k new channels; layer l
  reads channels [0, C0 + l*k) as a view (no torch.cat), and the buffer is the block's output;
- BN1's batch statistics of a channel are computed once, when the channel is written, and reused
  by every later layer (only gamma/beta and the running buffers differ per layer);
- each layer's two BN-ReLU-convs run the bn_relu_conv2d op's kernels: relu(bn(.)) is a temporary;
- the backward walks the layers in reverse with one gradient buffer of the block's shape, running
  the op's backward (cnnfast::_bn_relu_conv2d_backward) twice per layer. It keeps the buffer,
  per-channel statistics and the bottleneck outputs unless recompute_bottleneck is set (then they are
  recomputed from the buffer, for the least memory). Dropout keeps no mask: each layer keeps the
  random generator's state it drew its mask from, and the backward draws the same mask again
  (under torch.compile, which cannot trace generator states, the bool mask is kept instead);
- running statistics are updated once per forward (a checkpointed DenseNet updates them twice).

The formulas are the bn_relu_conv2d op's, so this block matches the plain concatenating DenseNet
to rounding.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from cnnfast.ops import _checks
from cnnfast.ops._higher_order import refuse_double_backward
from cnnfast.ops.batch_norm import (acc_dtype, batch_stats, check_batch_norm_dtype, check_values_per_channel,
                                   normalisation)

_ONE = [1, 1]


class BatchNormArgs(NamedTuple):
    """One BatchNorm2d of a layer this step: cnnfast/nn/_batch_norm_step.py's BatchNormStep and eps
    (shared with the DPN stage, cnnfast/ops/dual_path_stage.py)."""
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None
    use_batch_stats: bool
    momentum: float
    eps: float

    def normalise(self, mean, var, count: int, dtype):
        """(mean, invstd) this BatchNorm normalises with: cnnfast.ops.batch_norm.normalisation with its arguments."""
        return normalisation(mean, var, self.running_mean, self.running_var, self.use_batch_stats, self.momentum,
                             self.eps, count, dtype)


class DenseBlockConfig(NamedTuple):
    growth_rate: int
    norms: tuple[tuple[BatchNormArgs, BatchNormArgs], ...]  # (norm1, norm2) of each layer
    drop_rate: float
    training: bool  # dropout on (the BatchNorms say for themselves which statistics they use)
    recompute_bottleneck: bool
    backend: str  # 'cpp' or 'triton'
    keep_for_backward: bool = True  # False without autograd: bottlenecks and masks are freed at once


def check_unit_dtypes(input: torch.Tensor, norms: list[BatchNormArgs], parameters: list, names: list[str],
                      op: str) -> None:
    """The dtypes bn_relu_conv2d checks, for each BN-ReLU-conv unit of a block or stage: `norms` and
    `names` per unit, `parameters` (BN weight, BN bias, conv weight) per unit. Every unit's kernels
    run in input's dtype, so a mismatch would otherwise compute silently in one of the precisions."""
    for index, (norm, name) in enumerate(zip(norms, names)):
        bn_weight, bn_bias, conv_weight = parameters[3 * index:3 * index + 3]
        for kind, value in (("running_mean", norm.running_mean), ("running_var", norm.running_var),
                            ("weight", bn_weight), ("bias", bn_bias)):
            if value is not None:
                check_batch_norm_dtype(value, f"the BatchNorm {kind} of {name}", input.dtype, op)
        _checks.check_conv_dtype(conv_weight, f"the conv weight of {name}", input, op)


def dense_block(input: torch.Tensor, config: DenseBlockConfig, parameters: list) -> torch.Tensor:
    """The block's output [N, C0 + L*k, H, W]: the input followed by each layer's new features.

    `parameters` holds, for each layer, norm1's weight and bias, conv1's weight, norm2's weight and
    bias and conv2's weight (BatchNorm weights and biases may be None: affine=False)."""
    check_unit_dtypes(input, [norm for pair in config.norms for norm in pair], parameters,
                      [f"denselayer{layer + 1} (norm{unit} -> conv{unit})" for layer in range(len(config.norms))
                       for unit in (1, 2)],
                      "cnnfast.dense_block")
    check_values_per_channel(input, any(norm.use_batch_stats for pair in config.norms for norm in pair))
    keep = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, *parameters))
    return _DenseBlockFunction.apply(input, config._replace(keep_for_backward=keep), *parameters)


def _cpu_noise(like: torch.Tensor, p: float) -> torch.Tensor:
    """The scaled noise F.dropout multiplies a CPU tensor by, drawn as it draws it."""
    return torch.empty_like(like).bernoulli_(1 - p).div_(1 - p)


def _dropout(x: torch.Tensor, p: float):
    """F.dropout's result and its mask (bool), drawing the same random numbers as F.dropout, so that
    this block and the plain one agree under one seed: the fused kernel on CUDA, on CPU the scaled
    noise F.dropout multiplies by (rebuilt from the mask in backward, the same values)."""
    if x.is_cuda:
        return torch.native_dropout(x, p, True)
    noise = _cpu_noise(x, p)
    return x * noise, noise != 0


def _dropout_backward(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    if grad.is_cuda:
        return torch.ops.aten.native_dropout_backward(grad, mask, 1 / (1 - p))
    return grad * mask.to(grad.dtype).div_(1 - p)


class _DropoutDraw(NamedTuple):
    """What the backward needs to draw a layer's dropout mask again: the generator's state before
    the forward drew it, and the layout of the tensor it was drawn for (the kernels draw in memory
    order, so the same shape, strides and dtype give the same mask)."""
    rng_state: torch.Tensor
    shape: torch.Size
    stride: tuple
    dtype: torch.dtype
    device: torch.device

    @staticmethod
    def before(x: torch.Tensor) -> "_DropoutDraw":
        state = torch.cuda.get_rng_state(x.device) if x.is_cuda else torch.get_rng_state()
        return _DropoutDraw(state, x.shape, x.stride(), x.dtype, x.device)

    def mask(self, p: float) -> torch.Tensor:
        """The mask _dropout drew, drawn again; the generator is left as it was."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            if self.device.type == "cuda":
                torch.cuda.set_rng_state(self.rng_state, self.device)
            else:
                torch.set_rng_state(self.rng_state)
            like = torch.empty_strided(self.shape, self.stride, dtype=self.dtype, device=self.device)
            # On CUDA the fused kernel is the only way to the same mask (its output is dropped).
            return torch.native_dropout(like, p, True)[1] if like.is_cuda else _cpu_noise(like, p) != 0


class _DenseBlockFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, config: DenseBlockConfig, *parameters):
        n, c0, h, w = input.shape
        k, layers = config.growth_rate, len(config.norms)
        dtype = acc_dtype(input, config.backend)
        count = n * h * w
        buffer = torch.empty((n, c0 + layers * k, h, w), dtype=input.dtype, device=input.device,
                             memory_format=_checks.output_memory_format(input))
        buffer[:, :c0].copy_(input)
        # Batch statistics of every channel of the buffer, each computed when the channel is written.
        means = torch.empty(buffer.shape[1], dtype=dtype, device=input.device)
        variances = torch.empty_like(means)
        means[:c0], variances[:c0] = batch_stats(buffer[:, :c0], config.backend)
        saved_norms, bottlenecks = [], []
        masks, draws = [], []  # per layer, where dropout is on: its mask, or how to draw it again
        # Masks are drawn again in backward, not kept, except where the generator's state cannot be
        # kept: torch.compile's tracing and a CUDA graph capture.
        replay = (config.keep_for_backward and not torch.compiler.is_compiling()
                  and not (input.is_cuda and torch.cuda.is_current_stream_capturing()))
        for layer, (norm1, norm2) in enumerate(config.norms):
            bn1_weight, bn1_bias, conv1, bn2_weight, bn2_bias, conv2 = parameters[6 * layer:6 * layer + 6]
            c_in = c0 + layer * k
            features = buffer[:, :c_in]
            mean1, invstd1 = norm1.normalise(means[:c_in], variances[:c_in], count, dtype)
            bottleneck = torch.ops.cnnfast.bn_relu_conv2d(features, mean1, invstd1, bn1_weight, bn1_bias, conv1, None,
                                                          _ONE, [0, 0], _ONE, 1, norm1.use_batch_stats,
                                                          config.backend, "")
            mean2, var2 = batch_stats(bottleneck, config.backend) if norm2.use_batch_stats else (None, None)
            mean2, invstd2 = norm2.normalise(mean2, var2, count, dtype)
            new = torch.ops.cnnfast.bn_relu_conv2d(bottleneck, mean2, invstd2, bn2_weight, bn2_bias, conv2, None,
                                                   _ONE, _ONE, _ONE, 1, norm2.use_batch_stats, config.backend, "")
            if config.training and config.drop_rate > 0:
                if replay:
                    draws.append(_DropoutDraw.before(new))
                new, mask = _dropout(new, config.drop_rate)
                if config.keep_for_backward and not replay:
                    masks.append(mask)
            buffer[:, c_in:c_in + k].copy_(new)
            if layer + 1 < layers:  # the last layer's channels feed no layer of this block
                means[c_in:c_in + k], variances[c_in:c_in + k] = batch_stats(buffer[:, c_in:c_in + k],
                                                                             config.backend)
            # Batch statistics of BN1 are recomputed from the shared ones in backward (a copy per
            # layer would make the saved bytes grow with the square of the depth, however slowly).
            saved_norms += [None, None, mean2, invstd2] if norm1.use_batch_stats else [mean1, invstd1, mean2, invstd2]
            if config.keep_for_backward and not config.recompute_bottleneck:
                bottlenecks.append(bottleneck)
        ctx.config = config
        ctx.c0 = c0
        ctx.draws = draws  # generator states (a few bytes on CUDA, 5 KB on CPU) and layouts, no activations
        ctx.save_for_backward(buffer, means, variances, *parameters, *saved_norms, *bottlenecks, *masks)
        return buffer

    @staticmethod
    def backward(ctx, grad_output):
        refuse_double_backward()
        config, c0 = ctx.config, ctx.c0
        k, layers = config.growth_rate, len(config.norms)
        buffer, means, variances, *saved = ctx.saved_tensors
        parameters = saved[:6 * layers]
        saved_norms = saved[6 * layers:10 * layers]
        rest = saved[10 * layers:]
        bottlenecks = rest[:0 if config.recompute_bottleneck else layers]
        masks = rest[len(bottlenecks):]
        # d(loss)/d(features) for every channel of the buffer, completed layer by layer in reverse.
        grad_buffer = grad_output.clone(memory_format=_checks.output_memory_format(buffer))
        grad_parameters = [None] * (6 * layers)
        for layer in reversed(range(layers)):
            norm1, norm2 = config.norms[layer]
            bn1_weight, bn1_bias, conv1, bn2_weight, bn2_bias, conv2 = parameters[6 * layer:6 * layer + 6]
            mean1, invstd1, mean2, invstd2 = saved_norms[4 * layer:4 * layer + 4]
            needs = ctx.needs_input_grad[2 + 6 * layer:2 + 6 * layer + 6]
            c_in = c0 + layer * k
            if mean1 is None:  # as the forward computed them
                mean1, invstd1 = means[:c_in], torch.rsqrt(variances[:c_in] + norm1.eps)
            features = buffer[:, :c_in]
            # In the dtype the layer produced it (under autocast, conv2's: lower than the buffer's).
            grad_new = grad_buffer[:, c_in:c_in + k].to(conv2.dtype)
            if masks or ctx.draws:
                mask = masks[layer] if masks else ctx.draws[layer].mask(config.drop_rate)
                grad_new = _dropout_backward(grad_new, mask, config.drop_rate)
            if config.recompute_bottleneck:
                bottleneck = torch.ops.cnnfast.bn_relu_conv2d(features, mean1, invstd1, bn1_weight, bn1_bias, conv1,
                                                              None, _ONE, [0, 0], _ONE, 1, norm1.use_batch_stats,
                                                              config.backend, "")
            else:
                bottleneck = bottlenecks[layer]
            grad_bottleneck, grad_bn2_weight, grad_bn2_bias, grad_conv2, _ = \
                torch.ops.cnnfast._bn_relu_conv2d_backward(
                    grad_new, bottleneck, mean2, invstd2, bn2_weight, bn2_bias, conv2, False, _ONE, _ONE, _ONE, 1,
                    norm2.use_batch_stats, config.backend, "",
                    [True, bn2_weight is not None and needs[3], bn2_bias is not None and needs[4], needs[5], False])
            del bottleneck
            grad_features, grad_bn1_weight, grad_bn1_bias, grad_conv1, _ = \
                torch.ops.cnnfast._bn_relu_conv2d_backward(
                    grad_bottleneck, features, mean1, invstd1, bn1_weight, bn1_bias, conv1, False, _ONE, [0, 0], _ONE,
                    1, norm1.use_batch_stats, config.backend, "",
                    [True, bn1_weight is not None and needs[0], bn1_bias is not None and needs[1], needs[2], False])
            grad_buffer[:, :c_in] += grad_features
            grad_parameters[6 * layer:6 * layer + 6] = [grad_bn1_weight, grad_bn1_bias, grad_conv1, grad_bn2_weight,
                                                         grad_bn2_bias, grad_conv2]
        return (grad_buffer[:, :c0], None, *grad_parameters)
