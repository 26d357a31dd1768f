"""2-d max pooling: the op, its fake function, its autograd formula and the choice of backend.

What is kept for backward is the argmax as an offset inside its window (uint8 for windows of up to
256 elements): never the input, never int64 indices. Torch's int64 indices are derived from the
offsets only when return_indices asks for them.
"""
from __future__ import annotations

import torch

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks
from cnnfast.ops._higher_order import building_graph
from cnnfast.ops._triton import on_device, triton_module

OP = "cnnfast.max_pool2d"


def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """torch.nn.functional.max_pool2d, keeping a uint8 argmax for backward."""
    if isinstance(input, torch.Tensor) and not input.dtype.is_floating_point and not input.dtype.is_complex \
            and input.dtype != torch.bool:
        # Integers (label maps, masks) have no gradient, so nothing to keep: torch's own op, as
        # torch.nn.MaxPool2d pools them (cnnfast.convert swaps every MaxPool2d).
        return torch.nn.functional.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                                              return_indices)
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, allowed=(3, 4))
    kernel, stride, padding, dilation, _ = _checks.pool_window(input, kernel_size, stride, padding, dilation,
                                                               ceil_mode, OP)
    backend = resolve("max_pool2d", input)
    if backend == "reference":
        output, indices = reference.max_pool2d(input, kernel, stride, padding, dilation, bool(ceil_mode))
        return (output, indices) if return_indices else output
    op = torch.ops.cnnfast.max_pool2d_triton if backend == "triton" else torch.ops.cnnfast.max_pool2d
    output, offsets = op(input, kernel, stride, padding, dilation, bool(ceil_mode))
    if return_indices:
        return output, offsets_to_indices(offsets, input.shape[-1], kernel, stride, padding, dilation)
    return output


def offsets_to_indices(offsets: torch.Tensor, in_w: int, kernel, stride, padding, dilation) -> torch.Tensor:
    """torch's flat int64 indices (ih * W + iw) from window offsets (kh * kernel_w + kw)."""
    out_h, out_w = offsets.shape[-2:]
    offsets = offsets.long()
    rows = torch.arange(out_h, device=offsets.device).view(-1, 1) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=offsets.device).view(1, -1) * stride[1] - padding[1]
    ih = rows + torch.div(offsets, kernel[1], rounding_mode="floor") * dilation[0]
    iw = cols + torch.remainder(offsets, kernel[1]) * dilation[1]
    return ih * in_w + iw


def _triton_forward(input, kernel_size, stride, padding, dilation, ceil_mode):
    layout = _checks.output_memory_format(input)
    x = (input.unsqueeze(0) if input.dim() == 3 else input).contiguous(memory_format=layout)
    out_hw = tuple(_checks.pooled_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
                   for i in range(2))
    with on_device(x):
        output, offsets = triton_module("max_pool2d").max_pool2d_forward(
            x, tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), out_hw, layout)
    if input.dim() == 3:
        return output.squeeze(0), offsets.squeeze(0)
    return output, offsets


def _triton_backward(grad_output, offsets, input_hw, kernel_size, stride, padding, dilation):
    layout = _checks.output_memory_format(offsets)
    unbatched = offsets.dim() == 3
    if unbatched:
        grad_output, offsets = grad_output.unsqueeze(0), offsets.unsqueeze(0)
    with on_device(offsets):
        grad_input = triton_module("max_pool2d").max_pool2d_backward(
            grad_output.contiguous(memory_format=layout), offsets.contiguous(memory_format=layout), tuple(input_hw),
            tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation), layout)
    return grad_input.squeeze(0) if unbatched else grad_input


def _fake(input, kernel_size, stride, padding, dilation, ceil_mode):
    layout = _checks.output_memory_format(input)
    shape = tuple(input.shape[:-2]) + tuple(
        _checks.pooled_size(input.shape[-2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode)
        for i in range(2))
    output = torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=layout)
    offsets = torch.empty(shape, dtype=_checks.offset_dtype(kernel_size), device=input.device, memory_format=layout)
    return output, offsets


def _fake_backward(grad_output, offsets, input_hw, kernel_size, stride, padding, dilation):
    shape = tuple(offsets.shape[:-2]) + tuple(input_hw)
    return torch.empty(shape, dtype=grad_output.dtype, device=grad_output.device,
                       memory_format=_checks.output_memory_format(offsets))


def _setup_context(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.save_for_backward(output[1])
    ctx.input_hw = tuple(input.shape[-2:])
    ctx.window = (kernel_size, stride, padding, dilation)
    ctx.ceil_mode = ceil_mode


def _differentiable_backward(grad_output, offsets, input_hw, window, ceil_mode):
    """The gradient as torch's own max-pool backward computes it from int64 indices: differentiable
    in grad_output (its derivative gathers at the same argmax). Its `self` argument only gives the
    input's shape and layout; the values are never read."""
    shape_only = torch.empty(tuple(offsets.shape[:-2]) + tuple(input_hw), dtype=grad_output.dtype,
                             device=grad_output.device, memory_format=_checks.output_memory_format(offsets))
    indices = offsets_to_indices(offsets, input_hw[1], *window)
    return torch.ops.aten.max_pool2d_with_indices_backward(grad_output, shape_only, *window, ceil_mode, indices)


def _make_backward(backward_op):
    def backward(ctx, grad_output, _grad_offsets):
        (offsets,) = ctx.saved_tensors
        if building_graph():  # create_graph=True: a gradient with derivatives of its own
            grad_input = _differentiable_backward(grad_output, offsets, ctx.input_hw, ctx.window, ctx.ceil_mode)
        else:
            grad_input = backward_op(grad_output, offsets, ctx.input_hw, *ctx.window)
        return grad_input, None, None, None, None, None
    return backward


def _register() -> None:
    for name, backward_name in (("max_pool2d", "_max_pool2d_backward"),
                                ("max_pool2d_triton", "_max_pool2d_backward_triton")):
        torch.library.register_fake(f"cnnfast::{name}", _fake)
        torch.library.register_fake(f"cnnfast::{backward_name}", _fake_backward)
        torch.library.register_autograd(f"cnnfast::{name}", _make_backward(getattr(torch.ops.cnnfast, backward_name)),
                                        setup_context=_setup_context)
    torch.library.register_kernel("cnnfast::max_pool2d_triton", ("cpu", "cuda"), _triton_forward)
    torch.library.register_kernel("cnnfast::_max_pool2d_backward_triton", ("cpu", "cuda"), _triton_backward)


if extension_loaded():
    _register()
