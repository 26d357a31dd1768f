"""BatchNorm -> ReLU -> Conv2d in training mode, at the shapes DenseNet-121 and ResNet-50 run it:
nn.Sequential(BatchNorm2d, ReLU, Conv2d) (eager and torch.compile) against cnnfast.nn.BNReLUConv2d
wrapping the same modules. A forward+backward row is a training step: the gradients of the input
and of every parameter, and one running-statistics update.
"""
from __future__ import annotations

import torch
from torch import nn

import cnnfast
from benchmarks.harness import DTYPES, Case, Ops

# (label, in_channels, out_channels, kernel, stride, H = W). DenseNet-121's bottleneck 1x1 convs
# at the input width of the last layer of each block (256@56, 512@28, 1024@14, 1024@7 in the full
# network; here from 128 upwards as the issue asks), its 3x3 growth conv, and ResNet-50's
# bn1-relu-conv2 (3x3) and bn2-relu-conv3 (1x1) of its first and third stages.
SHAPES = (
    ("DenseNet 1x1", 128, 128, 1, 1, 56),
    ("DenseNet 1x1", 256, 128, 1, 1, 28),
    ("DenseNet 1x1", 512, 128, 1, 1, 14),
    ("DenseNet 1x1", 1024, 128, 1, 1, 7),
    ("DenseNet 3x3", 128, 32, 3, 1, 56),
    ("ResNet-50 3x3", 64, 64, 3, 1, 56),
    ("ResNet-50 1x1", 64, 256, 1, 1, 56),
    ("ResNet-50 3x3", 256, 256, 3, 1, 14),
)


def bn_relu_conv(device, dtype, in_channels: int, out_channels: int, kernel: int, stride: int) -> Ops:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(in_channels).to(device)  # BN parameters stay fp32, as under autocast
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False).to(device, dtype)
    sequential = nn.Sequential(bn, nn.ReLU(), conv)
    fused = cnnfast.nn.BNReLUConv2d.from_modules(bn, conv)
    return Ops(torch=sequential, cnnfast=fused, parameters=tuple(sequential.parameters()))


def _traffic(shape, out_channels: int, stride: int, backward: bool) -> int:
    """Elements no implementation avoids: x read (twice in training: statistics, then the
    normalisation) and y written; the backward reads dy and x and writes dx."""
    n, c, h, w = shape
    x, y = n * c * h * w, n * out_channels * (h // stride) * (w // stride)
    return 2 * x + y + ((y + 2 * x) if backward else 0)


def cases(device: str, quick: bool, variants: list[str]) -> list[Case]:
    """Batch 64 on a GPU, 4 on a CPU (minutes on 2 cores), 1 with --quick."""
    batch = 1 if quick else (64 if device == "cuda" else 4)
    dtypes = ("float32", "bfloat16") if device == "cuda" else ("float32",)
    result = []
    for label, cin, cout, kernel, stride, size in SHAPES:
        shape = (batch, cin, size, size)
        for dtype in dtypes:
            for backward in (False, True):
                for variant in variants:
                    result.append(Case(op=f"bn_relu_conv{kernel}x{kernel}_to{cout}", name=f"{label} ->{cout}",
                                       setup=f"{__name__}:bn_relu_conv", shape=shape, dtype=dtype, backward=backward,
                                       variant=variant,
                                       ideal_bytes=_traffic(shape, cout, stride, backward) * DTYPES[dtype].itemsize,
                                       setup_args=(cin, cout, kernel, stride)))
    return result
