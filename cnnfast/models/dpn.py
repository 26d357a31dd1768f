"""Dual Path Networks (Chen et al. 2017, "Dual Path Networks") on cnnfast's shared-buffer stages,
with timm's constructors (timm 1.0.x timm/models/dpn.py), state_dict keys and numbers, so that
timm's checkpoints load with strict=True."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnfast.models._weights import build
from cnnfast.nn.dpn import BN_EPS, BnAct, DualPathBlock, dual_path_stage
from cnnfast.nn.pooling import MaxPool2d

__all__ = ["DPN", "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]


class ConvBnAct(nn.Module):
    """relu(bn(conv(x))): timm's ConvNormAct stem (children `conv`, `bn`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class DPN(nn.Module):
    """timm's DPN: `features` (conv1_1, conv1_pool, conv{2..5}_{1..depth}, conv5_bn_ac), then global
    average pooling, dropout (drop_rate) and a 1x1 convolution `classifier` (none with
    num_classes=0: the pooled features are returned).

    Each stage: a 'proj' (stage 2) or 'down' (stride 2) DualPathBlock, then 'normal' ones; stage i
    has residual width bw = (64, 128, 256, 512)[i] * (1 if small else 4), bottleneck width
    r = k_r * (64, ...)[i] / 64, and its dense path grows by inc_sec[i] per block. With
    memory_efficient=True (default) a stage runs in one shared buffer (cnnfast.nn.dpn.dual_path_stage);
    False runs timm's block-by-block forward in torch.nn ops. The same numbers either way.
    recompute_residual=True keeps no residual path for backward (replayed there, stage by stage):
    the least memory, for one more projection and c1x1_c per block in backward.

    timm 1.0.x builds the final BatchNorm's activation from fc_act_layer='elu', but its norm layer
    factory keeps the ReLU already bound to the norm layer: conv5_bn_ac applies ReLU, as here.
    """

    classifier_name = "classifier"

    def __init__(self, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128), k_r: int = 96, groups: int = 32,
                 num_classes: int = 1000, in_chans: int = 3, small: bool = False, num_init_features: int = 64,
                 b: bool = False, drop_rate: float = 0.0, memory_efficient: bool = True,
                 recompute_residual: bool = False):
        super().__init__()
        if len(k_sec) != len(inc_sec) or not 1 <= len(k_sec) <= 4 or min(k_sec) < 1:
            raise ValueError(f"DPN: k_sec and inc_sec must give 1 to 4 stages of at least one block each, got "
                             f"k_sec={tuple(k_sec)}, inc_sec={tuple(inc_sec)}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DPN: drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.drop_rate = float(drop_rate)
        self.recompute_residual = recompute_residual
        bw_factor = 1 if small else 4
        blocks = OrderedDict()
        blocks["conv1_1"] = ConvBnAct(in_chans, num_init_features, 3 if small else 7, 2)
        # cnnfast's max-pool keeps a uint8 argmax for backward, not its input and int64 indices.
        blocks["conv1_pool"] = (MaxPool2d if memory_efficient else nn.MaxPool2d)(kernel_size=3, stride=2, padding=1)
        self.stages: list[list[str]] = []  # block names per stage: each stage runs as one
        in_chs = num_init_features
        for i, (bw_base, depth, inc) in enumerate(zip((64, 128, 256, 512), k_sec, inc_sec)):
            bw, r = bw_base * bw_factor, k_r * bw_base // 64
            names = [f"conv{i + 2}_{j}" for j in range(1, depth + 1)]
            blocks[names[0]] = DualPathBlock(in_chs, r, r, bw, inc, groups, "proj" if i == 0 else "down", b,
                                             memory_efficient)
            in_chs = bw + 3 * inc
            for name in names[1:]:
                blocks[name] = DualPathBlock(in_chs, r, r, bw, inc, groups, "normal", b, memory_efficient)
                in_chs += inc
            self.stages.append(names)
        blocks["conv5_bn_ac"] = BnAct(in_chs)
        self.features = nn.Sequential(blocks)
        self.num_features = in_chs
        self.classifier = nn.Conv2d(in_chs, num_classes, kernel_size=1) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features
        x = features.conv1_pool(features.conv1_1(x))
        for names in self.stages:
            x = dual_path_stage([features.get_submodule(name) for name in names], x, self.recompute_residual)
        return features.conv5_bn_ac(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.forward_features(x), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return torch.flatten(self.classifier(x), 1)


def _dpn(weights, model_args: dict, kwargs: dict) -> DPN:
    return build(DPN, weights, {**model_args, **kwargs})


def dpn68(weights=None, **kwargs) -> DPN:
    """DPN-68 (small stem, k_r 128, groups 32, blocks 3-4-12-3). `weights`: a local timm checkpoint."""
    return _dpn(weights, dict(small=True, num_init_features=10, k_r=128, groups=32, k_sec=(3, 4, 12, 3),
                              inc_sec=(16, 32, 32, 64)), kwargs)


def dpn68b(weights=None, **kwargs) -> DPN:
    """DPN-68b: DPN-68 with c1x1_c split into c1x1_c1 / c1x1_c2 (b=True)."""
    return _dpn(weights, dict(small=True, num_init_features=10, k_r=128, groups=32, b=True, k_sec=(3, 4, 12, 3),
                              inc_sec=(16, 32, 32, 64)), kwargs)


def dpn92(weights=None, **kwargs) -> DPN:
    """DPN-92 (k_r 96, groups 32, blocks 3-4-20-3)."""
    return _dpn(weights, dict(num_init_features=64, k_r=96, groups=32, k_sec=(3, 4, 20, 3),
                              inc_sec=(16, 32, 24, 128)), kwargs)


def dpn98(weights=None, **kwargs) -> DPN:
    """DPN-98 (k_r 160, groups 40, blocks 3-6-20-3)."""
    return _dpn(weights, dict(num_init_features=96, k_r=160, groups=40, k_sec=(3, 6, 20, 3),
                              inc_sec=(16, 32, 32, 128)), kwargs)


def dpn107(weights=None, **kwargs) -> DPN:
    """DPN-107 (k_r 200, groups 50, blocks 4-8-20-3)."""
    return _dpn(weights, dict(num_init_features=128, k_r=200, groups=50, k_sec=(4, 8, 20, 3),
                              inc_sec=(20, 64, 64, 128)), kwargs)


def dpn131(weights=None, **kwargs) -> DPN:
    """DPN-131 (k_r 160, groups 40, blocks 4-8-28-3)."""
    return _dpn(weights, dict(num_init_features=128, k_r=160, groups=40, k_sec=(4, 8, 28, 3),
                              inc_sec=(16, 32, 32, 128)), kwargs)
