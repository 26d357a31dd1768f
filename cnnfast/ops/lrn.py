"""Cross-channel local response normalisation: the op, its fake function, its autograd formula
and the choice of backend.

Only the input is kept for backward: the backward recomputes the scale from it in the same single
pass, which reads less memory than keeping the output would.
"""
from __future__ import annotations

import torch

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks
from cnnfast.ops._higher_order import building_graph, vjp_through
from cnnfast.ops._triton import on_device, triton_module

OP = "cnnfast.local_response_norm"


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """torch.nn.functional.local_response_norm, in one pass over memory."""
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, minimum=3)
    size, alpha, beta, k = _checks.lrn_arguments(size, alpha, beta, k, OP)
    backend = resolve("local_response_norm", input)
    if backend == "reference":
        return reference.local_response_norm(input, size, alpha, beta, k)
    if backend == "triton":
        return torch.ops.cnnfast.local_response_norm_triton(input, size, alpha, beta, k)
    return torch.ops.cnnfast.local_response_norm(input, size, alpha, beta, k)


def _walkable(input):
    """input where it lies if dense (the kernels walk any dense layout), else a dense copy in its
    stride order: clone's preserve_format, as csrc/op_helpers.h prepare_local_response_norm."""
    return input if _checks.non_overlapping_and_dense(input) else input.clone()


def _triton_forward(input, size, alpha, beta, k):
    x = _walkable(input)
    with on_device(x):
        return triton_module("lrn").lrn_forward(x, size, alpha, beta, k)


def _triton_backward(grad_output, input, size, alpha, beta, k):
    x = _walkable(input)
    if grad_output.stride() != x.stride():
        grad_output = torch.empty_like(x).copy_(grad_output)
    with on_device(x):
        return triton_module("lrn").lrn_backward(grad_output, x, size, alpha, beta, k)


def _fake(input, size, alpha, beta, k):
    # torch's elementwise layout, which every backend returns: x's strides where x is dense, else
    # dense in x's stride order (csrc/op_helpers.h prepare_local_response_norm).
    return torch.empty_like(input)


def _fake_backward(grad_output, input, size, alpha, beta, k):
    return _fake(input, size, alpha, beta, k)


def _setup_context(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    ctx.save_for_backward(input)
    ctx.arguments = (size, alpha, beta, k)


def _make_backward(backward_op):
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        if building_graph():  # create_graph=True: a gradient with derivatives of its own
            grad_input = vjp_through(lambda x: reference.local_response_norm(x, *ctx.arguments), input, grad_output)
        else:
            grad_input = backward_op(grad_output, input, *ctx.arguments)
        return grad_input, None, None, None, None
    return backward


def _register() -> None:
    for name, backward_name in (("local_response_norm", "_local_response_norm_backward"),
                                ("local_response_norm_triton", "_local_response_norm_backward_triton")):
        torch.library.register_fake(f"cnnfast::{name}", _fake)
        torch.library.register_fake(f"cnnfast::{backward_name}", _fake_backward)
        torch.library.register_autograd(f"cnnfast::{name}", _make_backward(getattr(torch.ops.cnnfast, backward_name)),
                                        setup_context=_setup_context)
    torch.library.register_kernel("cnnfast::local_response_norm_triton", ("cpu", "cuda"), _triton_forward)
    torch.library.register_kernel("cnnfast::_local_response_norm_backward_triton", ("cpu", "cuda"), _triton_backward)


if extension_loaded():
    _register()
