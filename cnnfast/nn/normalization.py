"""Drop-in replacement of torch.nn.LocalResponseNorm."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast._backend import fx_tracing
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops.lrn import local_response_norm


class LocalResponseNorm(NotScriptable, nn.LocalResponseNorm):
    """torch.nn.LocalResponseNorm (same arguments, attributes, repr and numbers) in one pass over
    memory, keeping only its input for backward. A subclass of torch's, so that code asking
    isinstance(m, nn.LocalResponseNorm) finds it."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if fx_tracing():
            return super().forward(input)
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)
