"""AlexNet's ReLU -> LocalResponseNorm -> MaxPool2d stage as one module."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops.relu_lrn_max_pool2d import relu_lrn_max_pool2d


class ReLULRNMaxPool2d(NotScriptable, nn.Module):
    """nn.ReLU() -> nn.LocalResponseNorm(size, alpha, beta, k) -> nn.MaxPool2d(kernel_size, stride,
    padding, dilation, ceil_mode) in one kernel that never writes the two intermediates, keeping
    only its input and a uint8 argmax for backward. alpha follows torch's convention (divided by
    size); the defaults pool AlexNet's way, 3x3 windows with stride 2."""

    __constants__ = ["size", "alpha", "beta", "k", "kernel_size", "stride", "padding", "dilation", "ceil_mode"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, kernel_size=3, stride=2,
                 padding=0, dilation=1, ceil_mode: bool = False) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None) else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.ceil_mode = ceil_mode

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if fx_tracing():
            return F.max_pool2d(F.local_response_norm(F.relu(input), self.size, self.alpha, self.beta, self.k),
                                self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return relu_lrn_max_pool2d(input, self.size, self.alpha, self.beta, self.k, self.kernel_size, self.stride,
                                   self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        # torch.nn.LocalResponseNorm's repr, then torch.nn.MaxPool2d's.
        return ("{size}, alpha={alpha}, beta={beta}, k={k}, kernel_size={kernel_size}, stride={stride}, "
                "padding={padding}, dilation={dilation}, ceil_mode={ceil_mode}".format(**self.__dict__))
