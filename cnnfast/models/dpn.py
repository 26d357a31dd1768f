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

__all__ = ["DPN", "DPNFeatures", "GlobalPool2d", "dpn68", "dpn68b", "dpn92", "dpn98", "dpn107", "dpn131"]


class ConvBnAct(nn.Module):
    """relu(bn(conv(x))): timm's ConvNormAct stem (children `conv`, `bn`)."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class DPNFeatures(nn.Sequential):
    """timm's DPN `features`: an nn.Sequential (the same children, names and keys) whose forward
    gives what nn.Sequential's does, children in order, but runs each stage of DualPathBlocks (a
    'proj' or 'down' block and the 'normal' ones after it) through `dual_path_stage`, in one shared
    buffer. Modules added, replaced or hooked run where they stand: a hooked or changed block makes
    its stage run block by block, calling it; a 'normal' block with no stage to join runs alone."""

    def __init__(self, blocks: OrderedDict, recompute_residual: bool = False):
        super().__init__(blocks)
        self.recompute_residual = recompute_residual

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        for run in _stages(self):
            input = dual_path_stage(run, input, self.recompute_residual) if isinstance(run, list) else run(input)
        return input


def _stages(modules) -> list:
    """`modules` in order, each stage of DualPathBlocks gathered into a list."""
    runs = []
    for module in modules:
        if isinstance(module, DualPathBlock) and module.has_proj:
            runs.append([module])
        elif isinstance(module, DualPathBlock) and runs and isinstance(runs[-1], list):
            runs[-1].append(module)
        else:
            runs.append(module)
    return runs


def _avg_max(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.adaptive_avg_pool2d(x, 1) + F.adaptive_max_pool2d(x, 1))


def _cat_avg_max(x: torch.Tensor) -> torch.Tensor:
    return torch.cat((F.adaptive_avg_pool2d(x, 1), F.adaptive_max_pool2d(x, 1)), 1)


# timm's pool types (SelectAdaptivePool2d): each keeps a 1x1 map for the 1x1-convolution classifier.
_GLOBAL_POOLS = {"avg": lambda x: F.adaptive_avg_pool2d(x, 1), "max": lambda x: F.adaptive_max_pool2d(x, 1),
                 "avgmax": _avg_max, "catavgmax": _cat_avg_max, "": lambda x: x}


class GlobalPool2d(nn.Module):
    """timm's SelectAdaptivePool2d(flatten=False), as its DPN head uses it: pool_type 'avg', 'max',
    'avgmax' (their mean), 'catavgmax' (both, concatenated: twice the channels) or '' (none)."""

    def __init__(self, pool_type: str = "avg"):
        super().__init__()
        if pool_type not in _GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {', '.join(map(repr, _GLOBAL_POOLS))} (no pooling), "
                             f"got {pool_type!r}")
        self.pool_type = pool_type

    def feat_mult(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def is_identity(self) -> bool:
        return not self.pool_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GLOBAL_POOLS[self.pool_type](x)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


def _head(num_features: int, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(global_pool, classifier, flatten) as timm's create_classifier(use_conv=True) makes them for
    DPN: a 1x1 convolution (none with num_classes=0), flattened unless there is no pooling."""
    pool = GlobalPool2d(global_pool)
    classifier = nn.Conv2d(num_features * pool.feat_mult(), num_classes, kernel_size=1) if num_classes > 0 \
        else nn.Identity()
    return pool, classifier, nn.Flatten(1) if global_pool else nn.Identity()


class DPN(nn.Module):
    """timm's DPN: `features` (conv1_1, conv1_pool, conv{2..5}_{1..depth}, conv5_bn_ac), then
    `global_pool` (global_pool='avg', 'max', 'avgmax', 'catavgmax' or '' for none), dropout
    (drop_rate), a 1x1 convolution `classifier` (none with num_classes=0: the pooled features are
    returned) and `flatten`; forward_features, forward_head(x, pre_logits=False), get_classifier()
    and reset_classifier(num_classes, global_pool='avg') as timm's. timm's arguments in timm's
    order; output_stride must be 32, as timm asserts.

    Each stage: a 'proj' (stage 2) or 'down' (stride 2) DualPathBlock, then 'normal' ones; stage i
    has residual width bw = (64, 128, 256, 512)[i] * (1 if small else 4), bottleneck width
    r = k_r * (64, ...)[i] / 64, and its dense path grows by inc_sec[i] per block. With
    memory_efficient=True (default) `features` (a DPNFeatures) runs each stage in one shared buffer
    (cnnfast.nn.dpn.dual_path_stage); False runs timm's block-by-block forward in torch.nn ops. The
    same numbers either way. recompute_residual=True keeps no residual path for backward (replayed
    there, stage by stage): the least memory, for one more projection and c1x1_c per block in backward.

    timm 1.0.x builds the final BatchNorm's activation from fc_act_layer='elu', but its norm layer
    factory keeps the ReLU already bound to the norm layer: conv5_bn_ac applies ReLU, as here.
    """

    classifier_name = "classifier"

    def __init__(self, k_sec=(3, 4, 20, 3), inc_sec=(16, 32, 24, 128), k_r: int = 96, groups: int = 32,
                 num_classes: int = 1000, in_chans: int = 3, output_stride: int = 32, global_pool: str = "avg",
                 small: bool = False, num_init_features: int = 64, b: bool = False, drop_rate: float = 0.0, *,
                 memory_efficient: bool = True, recompute_residual: bool = False):
        super().__init__()
        if len(k_sec) != len(inc_sec) or not 1 <= len(k_sec) <= 4 or min(k_sec) < 1:
            raise ValueError(f"DPN: k_sec and inc_sec must give 1 to 4 stages of at least one block each, got "
                             f"k_sec={tuple(k_sec)}, inc_sec={tuple(inc_sec)}")
        if output_stride != 32:
            raise ValueError(f"DPN: output_stride must be 32 (as in timm, which has no dilated DPN), "
                             f"got {output_stride}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DPN: drop_rate must be in [0, 1), got {drop_rate}")
        self.num_classes = num_classes
        self.drop_rate = float(drop_rate)
        self.b = b
        bw_factor = 1 if small else 4
        blocks = OrderedDict()
        blocks["conv1_1"] = ConvBnAct(in_chans, num_init_features, 3 if small else 7, 2)
        # cnnfast's max-pool keeps a uint8 argmax for backward, not its input and int64 indices.
        blocks["conv1_pool"] = (MaxPool2d if memory_efficient else nn.MaxPool2d)(kernel_size=3, stride=2, padding=1)
        in_chs = num_init_features
        for i, (bw_base, depth, inc) in enumerate(zip((64, 128, 256, 512), k_sec, inc_sec)):
            bw, r = bw_base * bw_factor, k_r * bw_base // 64
            blocks[f"conv{i + 2}_1"] = DualPathBlock(in_chs, r, r, bw, inc, groups, "proj" if i == 0 else "down", b,
                                                     memory_efficient)
            in_chs = bw + 3 * inc
            for j in range(2, depth + 1):
                blocks[f"conv{i + 2}_{j}"] = DualPathBlock(in_chs, r, r, bw, inc, groups, "normal", b,
                                                           memory_efficient)
                in_chs += inc
        blocks["conv5_bn_ac"] = BnAct(in_chs)
        self.features = DPNFeatures(blocks, recompute_residual)
        self.num_features = in_chs
        self.global_pool, self.classifier, self.flatten = _head(in_chs, num_classes, global_pool)

    @property
    def recompute_residual(self) -> bool:
        return self.features.recompute_residual

    @recompute_residual.setter
    def recompute_residual(self, value: bool) -> None:
        self.features.recompute_residual = value

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        """A fresh head for `num_classes` (0: none) and `global_pool`, as timm's; on the device and
        in the dtype of the model's parameters."""
        self.num_classes = num_classes
        self.global_pool, self.classifier, self.flatten = _head(self.num_features, num_classes, global_pool)
        parameter = next(self.features.parameters(), None)
        if parameter is not None:
            self.classifier.to(parameter.device, parameter.dtype)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # called, so hooks on model.features run

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.flatten(x if pre_logits else self.classifier(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


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
