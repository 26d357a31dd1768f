"""Deterministic DPN weights and input built from formulas, not from a random generator, so that the
committed outputs of timm's DPN (tests/fixtures/timm_dpn_state_dicts.json, made with timm itself)
can be reproduced here without timm."""
from __future__ import annotations

import math

import torch


def _wave(numel: int, index: int) -> torch.Tensor:
    """Values in [-0.5, 0.5) from two rounds of an integer LCG (exact on every machine; no products
    above 2**62)."""
    x = torch.arange(numel, dtype=torch.int64) * 7919 + index * 104729
    for _ in range(2):
        x = (x * 1103515245 + 12345) % 2**31
    return (x >> 7).double() / 2**24 - 0.5


def deterministic_state(state: dict) -> dict:
    """Values of the shapes of `state` (a DPN state_dict, in order): convolutions scaled by their
    fan-in, BatchNorm weights near 1, biases and running means near 0, running variances in [0.5, 1.5)."""
    result = {}
    for index, (key, tensor) in enumerate(state.items()):
        if key.endswith("num_batches_tracked"):
            result[key] = torch.zeros_like(tensor)
            continue
        wave = _wave(tensor.numel(), index).view(tensor.shape)
        if tensor.dim() == 4:
            value = wave * math.sqrt(24 / tensor[0].numel())  # variance 2 / fan-in
        elif key.endswith("running_var"):
            value = 1 + wave
        elif key.endswith("weight"):
            value = 1 + 0.5 * wave
        else:  # BatchNorm biases, running means, the classifier's bias
            value = 0.4 * wave
        result[key] = value.to(tensor.dtype)
    return result


def deterministic_input(batch: int = 2, size: int = 40) -> torch.Tensor:
    # 40x40 leaves 3x3 positions in the last stage: at 32x32 its training-mode BatchNorms see two
    # values per channel, and a change of 1e-15 in the input moves the outputs by 1e-9.
    return _wave(batch * 3 * size * size, 7).view(batch, 3, size, size) * 2
