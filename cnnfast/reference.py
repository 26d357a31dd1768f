"""Plain-torch formulas: the ground truth of the tests and the baseline of the benchmarks.

Written from the definitions, not from the kernels, and differentiable by torch's autograd.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["local_response_norm", "max_pool2d", "relu_lrn_max_pool"]


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


def relu_lrn_max_pool(input: torch.Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75,
                      k: float = 1.0, kernel_size: int = 3, stride: int = 2) -> torch.Tensor:
    """AlexNet's stage after conv1 and conv2, as torch.nn runs it."""
    return F.max_pool2d(F.local_response_norm(F.relu(input), size, alpha, beta, k), kernel_size, stride)
