"""relu(batch_norm(x) + identity), ResNet's block tail, keeping only its inputs for backward.

Eager PyTorch keeps, for this tail, the BN input, BN's output-side state and the ReLU output (a
full-size tensor). Here the backward keeps x and identity (the block's input, which its first
convolution keeps anyway, so it costs nothing extra) and the per-channel mean / inverse std: the
ReLU mask is recomputed from them (z = x * scale + shift + identity > 0), BN's two gradient sums
are reduced under that mask in one pass, and one elementwise pass gives both dx and d identity
(= the masked gradient). With identity None it is BN -> ReLU with BatchNorm's full semantics
(ResNet's stem).

The kernels are the BN-ReLU kernels with an optional residual (csrc/common/batch_norm.h has the
math); the op's kernel and autograd formula are C++ (csrc/composite/bn_add_relu.cpp), for their
per-call cost. Here: the functional API (checks, batch statistics, the running-statistics update
once per forward), the fake functions and the Triton ops.
Batch statistics synchronised across ranks are not supported (cnnfast/nn/residual.py refuses an
nn.SyncBatchNorm in training).
"""
from __future__ import annotations

import torch

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks
from cnnfast.ops._triton import on_device, triton_module
from cnnfast.ops.batch_norm import (_make_fake_stats, _new_like, _per_channel, acc_dtype, batch_stats,
                                    channel_viewable, check_batch_norm_parameter, check_running_stats,
                                    check_values_per_channel, normalisation, values_per_channel)

OP = "cnnfast.bn_add_relu"


def check_identity(input: torch.Tensor, identity: torch.Tensor | None, op: str = OP) -> None:
    """identity, where given, is added to BN's output elementwise: input's shape, dtype and device."""
    if identity is None:
        return
    _checks.check_tensor(identity, "identity", op)
    if identity.shape != input.shape:
        raise _checks.InputError(f"{op}: identity must have input's shape {tuple(input.shape)}, "
                                 f"got {tuple(identity.shape)}")
    if identity.dtype != input.dtype:
        raise _checks.InputDtypeError(f"{op}: identity must have input's dtype {input.dtype}, got {identity.dtype}")
    if identity.device != input.device:
        raise _checks.InputError(f"{op}: identity must be on input's device {input.device}, got {identity.device}")


def bn_add_relu(input: torch.Tensor, identity: torch.Tensor | None, running_mean: torch.Tensor | None,
                running_var: torch.Tensor | None, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, training: bool = False, momentum: float = 0.1,
                eps: float = 1e-5) -> torch.Tensor:
    """F.relu(F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    + identity) (identity None: nothing added), keeping only input, identity and per-channel
    statistics for backward.

    In training the batch statistics normalise and, where running_mean / running_var are given,
    update them once (running_var with the unbiased variance), as F.batch_norm does.
    """
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, allowed=(4,))
    check_identity(input, identity)
    tensors = {"input": input}
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                        ("bias", bias)):
        if value is not None:
            check_batch_norm_parameter(value, name, input, OP)
            tensors[name] = value
    _checks.check_same_device(OP, **tensors)
    check_running_stats(running_mean, running_var, training, OP)
    check_values_per_channel(input, training)
    count = values_per_channel(input)
    momentum = _checks.check_number(momentum, "momentum", OP)
    eps = _checks.check_number(eps, "eps", OP)

    backend = resolve("bn_add_relu", input, identity, weight, bias)
    if backend == "reference":
        return reference.bn_add_relu(input, identity, running_mean, running_var, weight, bias, training, momentum,
                                     eps)
    with torch.no_grad():
        mean = var = None
        if training:
            mean, var = batch_stats(input.detach(), backend)
        mean, invstd = normalisation(mean, var, running_mean, running_var, training, momentum, eps, count,
                                     acc_dtype(input, backend))
    return torch.ops.cnnfast.bn_add_relu(input, identity, mean, invstd, weight, bias, training, backend)


# ---- fake functions and the Triton ops ------------------------------------------------------

def _fake_bn_add_relu(input, identity, mean, invstd, weight, bias, training, backend):
    return _new_like(input)


def _fake_apply(input, scale, shift, residual):
    return _new_like(input)


def _fake_backward(grad_output, input, scale, shift, coef_x, coef_c, residual, residual_grad):
    return _new_like(input), _new_like(input) if residual is not None and residual_grad else None


def _make_fake_backward_reduce(backend):
    fake_stats = _make_fake_stats(backend)

    def fake_backward_reduce(grad_output, input, mean, scale, shift, residual):
        return fake_stats(input)
    return fake_backward_reduce


def _triton_apply(input, scale, shift, residual):
    out = _new_like(input)
    with on_device(input):
        return triton_module("batch_norm").bn_relu(
            channel_viewable(input), _per_channel(scale, input), _per_channel(shift, input), out,
            None if residual is None else channel_viewable(residual))


def _triton_backward_reduce(grad_output, input, mean, scale, shift, residual):
    with on_device(input):
        return triton_module("batch_norm").bn_relu_backward_reduce(
            channel_viewable(grad_output), channel_viewable(input), _per_channel(mean, input),
            _per_channel(scale, input), _per_channel(shift, input),
            None if residual is None else channel_viewable(residual))


def _triton_backward(grad_output, input, scale, shift, coef_x, coef_c, residual, residual_grad):
    out = _new_like(input)
    grad_residual = _new_like(input) if residual is not None and residual_grad else None
    with on_device(input):
        triton_module("batch_norm").bn_relu_backward(
            channel_viewable(grad_output), channel_viewable(input), _per_channel(scale, input),
            _per_channel(shift, input), _per_channel(coef_x, input), _per_channel(coef_c, input), out,
            None if residual is None else channel_viewable(residual), grad_residual)
    return out, grad_residual


def _register() -> None:
    for suffix, backend in (("", "cpp"), ("_triton", "triton")):
        torch.library.register_fake(f"cnnfast::_bn_add_relu_apply{suffix}", _fake_apply)
        torch.library.register_fake(f"cnnfast::_bn_add_relu_backward_reduce{suffix}",
                                    _make_fake_backward_reduce(backend))
        torch.library.register_fake(f"cnnfast::_bn_add_relu_backward{suffix}", _fake_backward)
    for name, kernel in (("_bn_add_relu_apply_triton", _triton_apply),
                         ("_bn_add_relu_backward_reduce_triton", _triton_backward_reduce),
                         ("_bn_add_relu_backward_triton", _triton_backward)):
        torch.library.register_kernel(f"cnnfast::{name}", ("cpu", "cuda"), kernel)
    torch.library.register_fake("cnnfast::bn_add_relu", _fake_bn_add_relu)


if extension_loaded():
    _register()
