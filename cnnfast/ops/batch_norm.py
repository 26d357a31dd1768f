"""BatchNorm -> ReLU as per-channel multiply-adds (csrc/common/batch_norm.h has the math): batch
statistics, the fused apply relu(x * scale + shift) and its backward, on every backend.

`kernels(backend)` gives the ops of one backend ("cpp", "triton" or "reference") behind one
interface, so composite ops (bn_relu_conv2d, the DenseNet block) are written once.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import CPU_KERNELS_ACCUMULATE_FP32_IN_FP64, extension_loaded
from cnnfast.ops import _checks
from cnnfast.ops._higher_order import refuse_double_backward
from cnnfast.ops._triton import on_device, triton_module

OP = "cnnfast.bn_relu"


def acc_dtype(input: torch.Tensor, backend: str = "cpp") -> torch.dtype:
    """Per-channel tensors and sums, as torch's BatchNorm accumulates: fp64 for fp64 inputs and, with the
    C++ kernels and the reference, for fp32 inputs on CPU; fp32 otherwise (csrc/op_helpers.h
    `bn_acc_type`, whose CPU rule cnnfast._C exports). The Triton kernels use the GPU rule on every
    device."""
    if input.dtype == torch.float64:
        return torch.float64
    cpu_in_fp64 = backend == "reference" or (backend == "cpp" and CPU_KERNELS_ACCUMULATE_FP32_IN_FP64)
    if input.dtype == torch.float32 and input.device.type == "cpu" and cpu_in_fp64:
        return torch.float64
    return torch.float32


class BnReluKernels(NamedTuple):
    backend: str
    stats: Callable
    bn_relu: Callable
    backward_reduce: Callable
    backward: Callable


def _op_table(backend: str) -> BnReluKernels:
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.cnnfast
    return BnReluKernels(backend, getattr(ops, "batch_norm_stats" + suffix), getattr(ops, "bn_relu" + suffix),
                         getattr(ops, "_bn_relu_backward_reduce" + suffix), getattr(ops, "_bn_relu_backward" + suffix))


# Built once (torch.compile traces a lookup, not the construction).
_KERNELS = {"reference": BnReluKernels("reference", reference.batch_norm_stats, reference.bn_relu,
                                       reference.bn_relu_backward_sums, reference.bn_relu_input_grad)}
if extension_loaded():
    _KERNELS.update(cpp=_op_table("cpp"), triton=_op_table("triton"))


def kernels(backend: str) -> BnReluKernels:
    """The four BN-ReLU ops of `backend` ('cpp', 'triton' or 'reference')."""
    return _KERNELS[backend]


def batch_stats(x: torch.Tensor, backend: str):
    """Per-channel mean and biased variance of `x` in the accumulation type. Of an empty batch:
    finite placeholders (0, 1), so that its (empty) gradients are zeros, not NaN."""
    if x.numel() == 0:
        mean = torch.zeros(x.shape[1], dtype=acc_dtype(x, backend), device=x.device)
        return mean, torch.ones_like(mean)
    return kernels(backend).stats(x)


def normalisation(mean, var, running_mean, running_var, use_batch_stats: bool, momentum: float, eps: float,
                  count: int, dtype: torch.dtype):
    """(mean, invstd) one BatchNorm normalises with this step: the batch's `mean` and `var` (over
    `count` values per channel), blended once into the running statistics where there are any;
    or, without batch statistics, the running ones (in `dtype`). `count` is an int, or a
    one-element tensor on the statistics' device for a process group's (already checked to be at
    least 2: cnnfast/ops/sync_batch_norm.py). eps is checked here, where every BatchNorm of every
    op passes, as F.batch_norm checks it: positive with batch statistics, non-negative without."""
    _checks.check_batch_norm_eps(eps, use_batch_stats)
    if use_batch_stats:
        if running_mean is not None and isinstance(count, torch.Tensor):
            torch.ops.cnnfast._update_running_stats_counted(running_mean, running_var, mean, var, momentum, count)
        elif running_mean is not None and count > 0:
            torch.ops.cnnfast._update_running_stats(running_mean, running_var, mean, var, momentum, count)
    else:
        mean, var = running_mean.to(dtype), running_var.to(dtype)
    return mean, torch.rsqrt(var + eps)


def values_per_channel(x: torch.Tensor) -> int:
    """What BatchNorm averages over per channel: N * H * W."""
    return x.shape[0] * math.prod(x.shape[2:])


def check_values_per_channel(x: torch.Tensor | torch.Size, training: bool) -> None:
    """As nn.BatchNorm2d, with its message: batch statistics need more than one value per channel.
    x: the BatchNorm's input, or its shape."""
    shape = x if isinstance(x, torch.Size) else x.shape
    if training and shape[0] * math.prod(shape[2:]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {shape}")


def check_running_stats(running_mean, running_var, training: bool, op: str) -> None:
    """Both running statistics or neither, and both in evaluation, as F.batch_norm requires."""
    if (running_mean is None) != (running_var is None):
        raise _checks.InputError(f"{op}: running_mean and running_var must either both be None or neither be None")
    if not training and running_mean is None:
        raise _checks.InputError(f"{op}: running_mean and running_var must be given in evaluation mode "
                                 f"(training=False)")
    for name, value in (("running_mean", running_mean), ("running_var", running_var)):
        # Training writes one value per channel: an expanded view (stride 0) would have every
        # channel write one element (torch's CPU kernel lets the last channel win).
        if training and value is not None and value.shape[0] > 1 and value.stride(0) == 0:
            raise _checks.InputError(f"{op}: {name} is updated in training and must hold one element per channel, "
                                     f"got an expanded view (stride 0); pass {name}.clone()")


def check_per_channel(value, name: str, input: torch.Tensor, op: str) -> None:
    """One value per channel of `input` (the caller checks devices, once for all its tensors)."""
    _checks.check_tensor(value, name, op)
    if value.dim() != 1 or value.shape[0] != input.shape[1]:
        raise _checks.InputError(f"{op}: {name} must have {input.shape[1]} values (one per channel of input), "
                                 f"got shape {tuple(value.shape)}")


def check_batch_norm_parameter(value, name: str, input: torch.Tensor, op: str) -> None:
    """A BatchNorm weight, bias or running statistic: one value per channel, in input's dtype or,
    for a float16 / bfloat16 input, float32 (torch's BatchNorm refuses any other mix rather than
    compute in one of the two precisions silently). An input of no channels with a weight is
    refused, as torch's BatchNorm refuses it (with an IndexError from inside); without one, torch
    and cnnfast return empty results."""
    check_per_channel(value, name, input, op)
    check_batch_norm_dtype(value, name, input.dtype, op)
    if input.shape[1] == 0 and name.endswith("weight"):
        raise _checks.InputError(f"{op}: input has no channels, got input size {tuple(input.shape)}; torch's "
                                 f"BatchNorm with a {name} (affine) fails on it too")


def check_batch_norm_dtype(value: torch.Tensor, name: str, dtype: torch.dtype, op: str) -> None:
    """check_batch_norm_parameter's dtype rule alone, for an input of `dtype`."""
    low_precision = dtype in (torch.float16, torch.bfloat16)
    if value.dtype != dtype and not (low_precision and value.dtype == torch.float32):
        allowed = f"{dtype} or torch.float32" if low_precision else str(dtype)
        raise _checks.InputDtypeError(f"{op}: {name} must be {allowed} for a {dtype} input, as in torch's "
                                      f"BatchNorm; got {value.dtype}")


def bn_relu(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(input * scale[c] + shift[c]) for a 4-d input, differentiable in all three."""
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, allowed=(4,))
    check_per_channel(scale, "scale", input, OP)
    check_per_channel(shift, "shift", input, OP)
    _checks.check_same_device(OP, input=input, scale=scale, shift=shift)
    return kernels(resolve("bn_relu", input, scale, shift)).bn_relu(input, scale, shift)


# ---- Triton: the *_triton ops run the launchers of triton_kernels/batch_norm.py ----------------

def channel_viewable(t: torch.Tensor) -> torch.Tensor:
    """As csrc/op_helpers.h `channel_viewable`: read in place when H and W merge into one stride."""
    if t.shape[2] <= 1 or t.shape[3] <= 1 or t.stride(2) == t.shape[3] * t.stride(3):
        return t
    return t.contiguous(memory_format=_checks.output_memory_format(t))


def _per_channel(t, input):
    return t.to(acc_dtype(input, "triton")).contiguous()


def _new_like(input):
    return torch.empty(input.shape, dtype=input.dtype, device=input.device,
                       memory_format=_checks.output_memory_format(input))


def _triton_stats(input):
    with on_device(input):
        return triton_module("batch_norm").batch_norm_stats(channel_viewable(input))


def _triton_bn_relu(input, scale, shift):
    out = _new_like(input)
    with on_device(input):
        return triton_module("batch_norm").bn_relu(channel_viewable(input), _per_channel(scale, input),
                                                    _per_channel(shift, input), out)


def _triton_backward_reduce(grad_output, input, mean, scale, shift):
    with on_device(input):
        return triton_module("batch_norm").bn_relu_backward_reduce(
            channel_viewable(grad_output), channel_viewable(input), _per_channel(mean, input),
            _per_channel(scale, input), _per_channel(shift, input))


def _triton_backward(grad_output, input, scale, shift, coef_x, coef_c):
    out = _new_like(input)
    with on_device(input):
        return triton_module("batch_norm").bn_relu_backward(
            channel_viewable(grad_output), channel_viewable(input), _per_channel(scale, input),
            _per_channel(shift, input), _per_channel(coef_x, input), _per_channel(coef_c, input), out)


# ---- fake functions and the autograd formula of bn_relu --------------------------------------

def _make_fake_stats(backend):
    def fake_stats(input):
        empty = input.new_empty((input.shape[1],), dtype=acc_dtype(input, backend))
        return empty, torch.empty_like(empty)
    return fake_stats


def _make_fake_backward_reduce(backend):
    fake_stats = _make_fake_stats(backend)

    def fake_backward_reduce(grad_output, input, mean, scale, shift):
        return fake_stats(input)
    return fake_backward_reduce


def _fake_bn_relu(input, scale, shift):
    return _new_like(input)


def _fake_backward(grad_output, input, scale, shift, coef_x, coef_c):
    return _new_like(input)


def _setup_context(ctx, inputs, output):
    input, scale, shift = inputs
    ctx.save_for_backward(input, scale, shift)


def _make_backward(ops: BnReluKernels):
    def backward(ctx, grad_output):
        refuse_double_backward()
        input, scale, shift = ctx.saved_tensors
        grad_input = grad_scale = grad_shift = None
        zeros = torch.zeros_like(scale, dtype=acc_dtype(input, ops.backend))
        if ctx.needs_input_grad[0]:
            grad_input = ops.backward(grad_output, input, scale, shift, zeros, zeros)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            # With mean 0 the second sum is sum(dz * x): d scale.
            sum_dz, sum_dz_x = ops.backward_reduce(grad_output, input, zeros, scale, shift)
            grad_scale, grad_shift = sum_dz_x.to(scale.dtype), sum_dz.to(shift.dtype)
        return grad_input, grad_scale, grad_shift
    return backward


def _register() -> None:
    for suffix, backend in (("", "cpp"), ("_triton", "triton")):
        torch.library.register_fake(f"cnnfast::batch_norm_stats{suffix}", _make_fake_stats(backend))
        torch.library.register_fake(f"cnnfast::bn_relu{suffix}", _fake_bn_relu)
        torch.library.register_fake(f"cnnfast::_bn_relu_backward_reduce{suffix}", _make_fake_backward_reduce(backend))
        torch.library.register_fake(f"cnnfast::_bn_relu_backward{suffix}", _fake_backward)
        torch.library.register_autograd(f"cnnfast::bn_relu{suffix}", _make_backward(kernels(backend)),
                                        setup_context=_setup_context)
    for name, kernel in (("batch_norm_stats_triton", _triton_stats), ("bn_relu_triton", _triton_bn_relu),
                         ("_bn_relu_backward_reduce_triton", _triton_backward_reduce),
                         ("_bn_relu_backward_triton", _triton_backward)):
        torch.library.register_kernel(f"cnnfast::{name}", ("cpu", "cuda"), kernel)


if extension_loaded():
    _register()
