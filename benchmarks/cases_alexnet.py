"""AlexNet's normalisation and pooling, at the shapes AlexNet runs them: after conv1 (96x55x55)
and after conv2 (256x27x27), where ReLU -> LRN -> max-pool 3/2 follows each convolution.

Each setup function returns the same computation twice (harness.Ops): with torch.nn.functional,
which is also what torch.compile compiles, and with cnnfast.
"""
from __future__ import annotations

import math

import torch.nn.functional as F

from cnnfast import functional as CF
from benchmarks.harness import DTYPES, Case, Ops

# AlexNet's LRN (Krizhevsky et al. 2012, section 3.3: n=5, k=2, alpha=1e-4, beta=0.75). The speed
# does not depend on alpha, so torch's alpha/n convention needs no correction here.
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
POOL = dict(kernel_size=3, stride=2)  # overlapping pooling, section 3.4
SHAPES = ((96, 55, 55), (256, 27, 27))  # (C, H, W) after conv1 and conv2


def lrn(device, dtype) -> Ops:  # no parameters: nothing to place
    return Ops(torch=lambda x: F.local_response_norm(x, **LRN),
               cnnfast=lambda x: CF.local_response_norm(x, **LRN))


def max_pool(device, dtype) -> Ops:  # no parameters: nothing to place
    return Ops(torch=lambda x: F.max_pool2d(x, **POOL),
               cnnfast=lambda x: CF.max_pool2d(x, **POOL))


def relu_lrn_max_pool(device, dtype) -> Ops:  # no parameters: nothing to place
    # torch.nn's three modules against cnnfast's fused kernel.
    return Ops(torch=lambda x: F.max_pool2d(F.local_response_norm(F.relu(x), **LRN), **POOL),
               cnnfast=lambda x: CF.relu_lrn_max_pool2d(x, **LRN, **POOL))


# The traffic no implementation can avoid, in elements of the input (n) and of the pooled output
# (m): each input read once and each output written once; a backward reads grad_output and what
# it needs of the input, and writes grad_input. GB/s is this over the measured time.
def _pooled(shape) -> int:
    *lead, h, w = shape
    return math.prod(lead) * ((h - 3) // 2 + 1) * ((w - 3) // 2 + 1)


def _traffic(op: str, shape, backward: bool) -> int:
    n, m = math.prod(shape), _pooled(shape)
    if op == "lrn":  # fwd: x -> y; bwd: x, dy -> dx (the scale is recomputed from x)
        return 5 * n if backward else 2 * n
    if op == "max_pool":  # fwd: x -> y; bwd: dy -> dx (the argmax, a byte per output, not counted)
        return 2 * n + 2 * m if backward else n + m
    return 3 * n + 2 * m if backward else n + m  # relu_lrn_max_pool: fwd x -> y; bwd x, dy -> dx


OPS = (("lrn", "LRN 5", lrn), ("max_pool", "max-pool 3/2", max_pool),
       ("relu_lrn_max_pool", "ReLU-LRN-max-pool", relu_lrn_max_pool))


def cases(device: str, quick: bool, variants: list[str]) -> list[Case]:
    """Batch 128 on a GPU (AlexNet's), 8 on a CPU so the run takes minutes, 2 for --quick."""
    batch = 2 if quick else (128 if device == "cuda" else 8)
    dtypes = ("float32", "bfloat16") if device == "cuda" else ("float32",)
    result = []
    for op, name, setup in OPS:
        for chw in SHAPES:
            shape = (batch, *chw)
            for dtype in dtypes:
                itemsize = DTYPES[dtype].itemsize
                for backward in (False, True):
                    for variant in variants:  # side by side: torch first, the speed-up's baseline
                        result.append(Case(op=op, name=name, setup=f"{__name__}:{setup.__name__}", shape=shape,
                                           dtype=dtype, backward=backward, variant=variant,
                                           ideal_bytes=_traffic(op, shape, backward) * itemsize))
    return result
