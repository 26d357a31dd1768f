"""AlexNet's ReLU -> LRN -> max-pool as one op: the op, its fake function, its autograd formula and
the choice of backend.

The forward never writes relu(input) nor the LRN output. What is kept for backward is the input
(the convolution's output, which torch.nn's ReLU would have kept anyway) and the argmax as a uint8
offset inside each window: torch.nn keeps relu(x), the LRN output and int64 indices besides.
"""
from __future__ import annotations

import torch

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks, max_pool2d
from cnnfast.ops._higher_order import building_graph, vjp_through
from cnnfast.ops._triton import on_device, triton_module

OP = "cnnfast.relu_lrn_max_pool2d"


def relu_lrn_max_pool2d(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                        kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode: bool = False) -> torch.Tensor:
    """max_pool2d(local_response_norm(relu(input), size, alpha, beta, k), kernel_size, stride, padding,
    dilation, ceil_mode) with torch.nn.functional's semantics, in one kernel. input: [N, C, H, W]
    (a 3-d input is refused: torch's LRN would take its second dim for the channels)."""
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, allowed=(4,))
    size, alpha, beta, k = _checks.lrn_arguments(size, alpha, beta, k, OP)
    kernel, stride, padding, dilation, _ = _checks.pool_window(input, kernel_size, stride, padding, dilation,
                                                               ceil_mode, OP)
    backend = resolve("relu_lrn_max_pool2d", input)
    if backend == "reference":
        return reference.relu_lrn_max_pool2d(input, size, alpha, beta, k, kernel, stride, padding, dilation,
                                             bool(ceil_mode))
    op = torch.ops.cnnfast.relu_lrn_max_pool2d_triton if backend == "triton" else torch.ops.cnnfast.relu_lrn_max_pool2d
    output, _ = op(input, size, alpha, beta, k, kernel, stride, padding, dilation, bool(ceil_mode))
    return output


def _triton_forward(input, size, alpha, beta, k, kernel_size, stride, padding, dilation, ceil_mode):
    layout = _checks.output_memory_format(input)
    x = input.contiguous(memory_format=layout)
    out_hw = tuple(_checks.pooled_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
                   for i in range(2))
    with on_device(x):
        return triton_module("relu_lrn_max_pool2d").relu_lrn_max_pool2d_forward(
            x, size, alpha, beta, k, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), out_hw,
            layout)


def _triton_backward(grad_output, offsets, input, size, alpha, beta, k, kernel_size, stride, padding, dilation):
    layout = _checks.output_memory_format(input)
    with on_device(input):
        grad_input = triton_module("relu_lrn_max_pool2d").relu_lrn_max_pool2d_backward(
            grad_output.contiguous(memory_format=layout), offsets.contiguous(memory_format=layout),
            input.contiguous(memory_format=layout), size, alpha, beta, k, tuple(kernel_size), tuple(stride),
            tuple(padding), tuple(dilation), layout)
    return _checks.with_elementwise_strides(grad_input, input)


def _fake(input, size, alpha, beta, k, kernel_size, stride, padding, dilation, ceil_mode):
    return max_pool2d._fake(input, kernel_size, stride, padding, dilation, ceil_mode)


def _fake_backward(grad_output, offsets, input, size, alpha, beta, k, kernel_size, stride, padding, dilation):
    # x's own layout, as torch's ReLU backward (elementwise) gives it.
    return torch.empty_like(input)


def _setup_context(ctx, inputs, output):
    input, size, alpha, beta, k, kernel_size, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(input, output[1])
    ctx.arguments = (size, alpha, beta, k, kernel_size, stride, padding, dilation)


def _pooled_at_offsets(input, offsets, size, alpha, beta, k, kernel_size, stride, padding, dilation):
    """The op's output from torch's own ops, each window taking the value at its saved argmax: the
    same function as the kernel's near `input`, with torch's derivatives of every order."""
    normalized = reference.local_response_norm(torch.relu(input), size, alpha, beta, k)
    indices = max_pool2d.offsets_to_indices(offsets, input.shape[-1], kernel_size, stride, padding, dilation)
    return normalized.flatten(-2).gather(-1, indices.flatten(-2)).view(offsets.shape)


def _make_backward(backward_op):
    def backward(ctx, grad_output, _grad_offsets):
        input, offsets = ctx.saved_tensors
        if building_graph():  # create_graph=True: a gradient with derivatives of its own
            grad_input = vjp_through(lambda x: _pooled_at_offsets(x, offsets, *ctx.arguments), input, grad_output)
        else:
            grad_input = backward_op(grad_output, offsets, input, *ctx.arguments)
        return (grad_input,) + (None,) * 9
    return backward


def _register() -> None:
    for name, backward_name in (("relu_lrn_max_pool2d", "_relu_lrn_max_pool2d_backward"),
                                ("relu_lrn_max_pool2d_triton", "_relu_lrn_max_pool2d_backward_triton")):
        torch.library.register_fake(f"cnnfast::{name}", _fake)
        torch.library.register_fake(f"cnnfast::{backward_name}", _fake_backward)
        torch.library.register_autograd(f"cnnfast::{name}", _make_backward(getattr(torch.ops.cnnfast, backward_name)),
                                        setup_context=_setup_context)
    torch.library.register_kernel("cnnfast::relu_lrn_max_pool2d_triton", ("cpu", "cuda"), _triton_forward)
    torch.library.register_kernel("cnnfast::_relu_lrn_max_pool2d_backward_triton", ("cpu", "cuda"), _triton_backward)


if extension_loaded():
    _register()
