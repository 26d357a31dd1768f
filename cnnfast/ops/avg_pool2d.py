"""Average pooling that keeps nothing for backward.

aten's avg_pool2d saves its input for backward, yet its backward reads only the input's shape:
the gradient of an average is the output gradient spread evenly over each window. This one saves
the shape alone (DenseNet's transitions pool a full-size convolution output: with torch's pool
that output would be kept for the whole backward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cnnfast._backend import plain_torch_required
from cnnfast.ops import _checks


class _AvgPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, ceil_mode, count_include_pad):
        ctx.arguments = (kernel_size, stride, padding, ceil_mode, count_include_pad)
        ctx.input_like = (input.shape, input.dtype, input.device, _checks.output_memory_format(input))
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)

    @staticmethod
    def backward(ctx, grad_output):
        shape, dtype, device, memory_format = ctx.input_like
        # An input of the right shape and layout whose values the backward never reads.
        shape_only = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
        grad_input = torch.ops.aten.avg_pool2d_backward(grad_output, shape_only, *ctx.arguments, None)
        return grad_input, None, None, None, None, None


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> torch.Tensor:
    """F.avg_pool2d (4-d input, no divisor_override), keeping nothing for backward."""
    op = "cnnfast.avg_pool2d"
    if isinstance(input, torch.Tensor) and (not input.is_floating_point() or plain_torch_required(input)):
        # Integers (nothing to differentiate), torch.func transforms and forward-mode AD, which
        # the autograd.Function below has no formulas for: torch's own pool.
        return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
    _checks.check_tensor(input, "input", op)
    _checks.check_dims(input, "input", op, allowed=(4,))
    kernel_size = _checks.pair(kernel_size, "kernel_size", op, minimum=1)
    stride = _checks.pool_stride(stride, kernel_size, op)
    padding = _checks.pair(padding, "padding", op, minimum=0)
    return _AvgPool2d.apply(input, list(kernel_size), list(stride), list(padding), ceil_mode, count_include_pad)
