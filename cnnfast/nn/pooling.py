"""Drop-in replacement of torch.nn.MaxPool2d."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops.max_pool2d import max_pool2d


class MaxPool2d(NotScriptable, nn.MaxPool2d):
    """torch.nn.MaxPool2d (same arguments, attributes, repr and semantics) that keeps a uint8 argmax
    for backward instead of the input. A subclass of torch's, so that code asking
    isinstance(m, nn.MaxPool2d) (layer walks, pooling swaps) finds it."""

    def forward(self, input: torch.Tensor):
        if fx_tracing():
            return super().forward(input)
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)
