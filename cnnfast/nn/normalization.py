"""Drop-in replacement of torch.nn.LocalResponseNorm."""
from __future__ import annotations

import torch
from torch import nn

from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.ops.lrn import local_response_norm


class LocalResponseNorm(NotScriptable, nn.Module):
    """torch.nn.LocalResponseNorm (same arguments, repr and numbers) in one pass over memory,
    keeping only its input for backward."""

    __constants__ = ["size", "alpha", "beta", "k"]

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return local_response_norm(input, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return "{size}, alpha={alpha}, beta={beta}, k={k}".format(**self.__dict__)
