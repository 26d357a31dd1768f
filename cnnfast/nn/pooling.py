"""Drop-in replacement of torch.nn.MaxPool2d."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops.max_pool2d import max_pool2d


class MaxPool2d(NotScriptable, nn.Module):
    """torch.nn.MaxPool2d (same arguments, repr and semantics) that keeps a uint8 argmax for
    backward instead of the input."""

    __constants__ = ["kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"]

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride if (stride is not None) else kernel_size
        self.padding = padding
        self.dilation = dilation
        self.return_indices = return_indices
        self.ceil_mode = ceil_mode

    def forward(self, input: torch.Tensor):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)

    def extra_repr(self) -> str:
        return ("kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}, "
                "ceil_mode={ceil_mode}".format(**self.__dict__))
