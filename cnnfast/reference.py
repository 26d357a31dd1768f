"""Plain-torch formulas: the ground truth of the tests and the baseline of the benchmarks.

Written from the definitions, not from the kernels, and differentiable by torch's autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["batch_norm_stats", "bn_add_relu", "bn_relu", "bn_relu_backward_sums", "bn_relu_conv2d",
           "bn_relu_input_grad", "local_response_norm", "max_pool2d", "relu_lrn_max_pool2d"]


def local_response_norm(input: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0) -> torch.Tensor:
    """b_c = a_c / (k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2]} a_c'^2)^beta,
    the window clipped to the channels (torch.nn.functional.local_response_norm's convention)."""
    channels = input.shape[1]
    squares = input.square()
    pad_shape = list(input.shape)
    pad_shape[1] = size - 1
    padded = torch.cat([squares.new_zeros(pad_shape[:1] + [size // 2] + pad_shape[2:]), squares,
                        squares.new_zeros(pad_shape[:1] + [(size - 1) // 2] + pad_shape[2:])], dim=1)
    window = sum(padded.narrow(1, shift, channels) for shift in range(size))
    return input / (k + alpha / size * window).pow(beta)


def max_pool2d(input: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool):
    """torch's own max pooling, which defines the semantics (ties, NaN, padding): (output, indices)."""
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, return_indices=True)


def relu_lrn_max_pool2d(input: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0, kernel_size=3, stride=2, padding=0, dilation=1,
                        ceil_mode: bool = False) -> torch.Tensor:
    """AlexNet's stage after conv1 and conv2: the LRN formula above on relu(input), then torch's
    max pooling (each intermediate kept, as torch.nn's modules keep them)."""
    normalized = local_response_norm(F.relu(input), size, alpha, beta, k)
    return F.max_pool2d(normalized, kernel_size, stride, padding, dilation, ceil_mode)


def _per_channel(values: torch.Tensor) -> torch.Tensor:
    return values.view(1, -1, 1, 1)


def _acc(input: torch.Tensor) -> torch.dtype:
    # As torch's BatchNorm accumulates: fp64 for fp32 on CPU (and for fp64), fp32 otherwise.
    if input.dtype == torch.float64 or (input.dtype == torch.float32 and input.device.type == "cpu"):
        return torch.float64
    return torch.float32


def batch_norm_stats(input: torch.Tensor):
    """Per-channel mean and biased variance over (N, H, W), in the accumulation type."""
    x = input.to(_acc(input))
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)


def bn_relu(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """relu(x * scale + shift) per channel, computed in the accumulation type."""
    x = input.to(_acc(input))
    return torch.relu(x * _per_channel(scale.to(x.dtype)) + _per_channel(shift.to(x.dtype))).to(input.dtype)


def _masked_grad(grad_output, x, scale, shift):
    z = x * _per_channel(scale.to(x.dtype)) + _per_channel(shift.to(x.dtype))
    # threshold_backward's rule: stopped where z <= 0, so a NaN z passes the gradient.
    return torch.where(z <= 0, torch.zeros((), dtype=x.dtype, device=x.device), grad_output.to(x.dtype))


def bn_relu_backward_sums(grad_output, input, mean, scale, shift):
    """(sum(dz), sum(dz * (x - mean))) per channel, dz the gradient through the ReLU."""
    x = input.to(_acc(input))
    dz = _masked_grad(grad_output, x, scale, shift)
    return dz.sum((0, 2, 3)), (dz * (x - _per_channel(mean.to(x.dtype)))).sum((0, 2, 3))


def bn_relu_input_grad(grad_output, input, scale, shift, coef_x, coef_c):
    """dz * scale + x * coef_x + coef_c per channel (csrc/common/batch_norm.h)."""
    x = input.to(_acc(input))
    dz = _masked_grad(grad_output, x, scale, shift)
    coef_x = _per_channel(coef_x.to(x.dtype))
    dx = dz * _per_channel(scale.to(x.dtype)) + torch.where(coef_x == 0, 0, x * coef_x) + _per_channel(coef_c.to(x.dtype))
    return dx.to(input.dtype)


def bn_relu_conv2d(input, running_mean, running_var, bn_weight, bn_bias, weight, bias=None, stride=1, padding=0,
                   dilation=1, groups=1, training=False, momentum=0.1, eps=1e-5):
    """conv2d(relu(batch_norm(input))) as torch.nn runs it (keeping both intermediates)."""
    normalized = F.batch_norm(input, running_mean, running_var, bn_weight, bn_bias, training, momentum, eps)
    return F.conv2d(F.relu(normalized), weight, bias, stride, padding, dilation, groups)


def bn_add_relu(input, identity, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                eps=1e-5):
    """relu(batch_norm(input) + identity) as torch.nn's ResNet block runs it (identity None: nothing
    added), keeping what eager torch keeps."""
    out = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return F.relu(out if identity is None else out + identity)
