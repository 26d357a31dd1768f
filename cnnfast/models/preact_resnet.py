"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks"), built
from cnnfast.nn.BNReLUConv2d: every convolution is preceded by its own BN -> ReLU, which is
recomputed in backward instead of stored, and the identity path carries no activation at all.

Layout (ImageNet): conv1 7x7/2 -> max-pool 3/2 -> layer1..layer4 of pre-activation units -> a final
BN -> ReLU (`bn`) -> global average pool -> fc. A variant of fb.resnet.torch's preresnet, which
puts BN -> ReLU after conv1 and skips the first unit's pre-activation: here that first unit's own
BN -> ReLU does the job, one BatchNorm fewer. The first unit of a block whose shape changes
pre-activates once for both paths, as in the paper: its 1x1 projection `shortcut` and its first
convolution read the same relu(bn(x)), which is then materialised (kept by the two convolutions).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from cnnfast.models._weights import build
from cnnfast.nn.conv import BNReLUConv2d
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.residual import bn_add_relu_module

__all__ = ["PreActBasicBlock", "PreActBottleneck", "PreActResNet", "preact_resnet18", "preact_resnet34",
           "preact_resnet50", "preact_resnet101", "preact_resnet152"]


class _PreActBlock(nn.Module):
    """units[0] .. units[-1] (BNReLUConv2d), plus identity or a projection of the pre-activation."""
    expansion: int = 1

    def __init__(self, units: list[BNReLUConv2d], inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        for i, unit in enumerate(units):
            self.add_module(f"unit{i + 1}", unit)
        self._units = [f"unit{i + 1}" for i in range(len(units))]
        out = planes * self.expansion
        self.shortcut = None
        if stride != 1 or inplanes != out:
            self.shortcut = nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = [getattr(self, name) for name in self._units]
        if self.shortcut is None:
            identity, out = x, units[0](x)
        else:
            if units[0].bn.training and units[0]._sync_group() is not None:
                raise NotImplementedError("PreActResNet: a block with a projection shares its first unit's "
                                          "pre-activation, which cannot synchronise batch statistics across ranks "
                                          "(convert_sync_bn); train it without synchronised BatchNorm")
            preactivated = bn_add_relu_module(units[0].bn, x)
            identity, out = self.shortcut(preactivated), units[0].conv(preactivated)
        for unit in units[1:]:
            out = unit(out)
        return out + identity


class PreActBasicBlock(_PreActBlock):
    """Two 3x3 pre-activation units (the stride in the first)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__([BNReLUConv2d(inplanes, planes, 3, stride, 1),
                          BNReLUConv2d(planes, planes, 3, 1, 1)], inplanes, planes, stride)


class PreActBottleneck(_PreActBlock):
    """1x1 -> 3x3 (the stride) -> 1x1 pre-activation units, 4x wider out."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__([BNReLUConv2d(inplanes, planes, 1),
                          BNReLUConv2d(planes, planes, 3, stride, 1),
                          BNReLUConv2d(planes, planes * self.expansion, 1)], inplanes, planes, stride)


class PreActResNet(nn.Module):
    """layer1..layer4 of pre-activation blocks (`block`, `layers` of them per stage) between the
    stem (conv1, maxpool) and the head (bn, avgpool, fc)."""
    classifier_name = "fc"  # replaced when a checkpoint's num_classes differs; kept by freeze_backbone
    def __init__(self, block: type[_PreActBlock], layers: Sequence[int], num_classes: int = 1000) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"PreActResNet: layers must be four positive block counts, got {layers}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage = [block(inplanes, planes, stride)]
            inplanes = planes * block.expansion
            stage += [block(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.bn = nn.BatchNorm2d(inplanes)  # the last unit's output is activated once, before pooling
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = bn_add_relu_module(self.bn, x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _preact(block, layers, weights, **kwargs) -> PreActResNet:
    return build(PreActResNet, weights, dict(block=block, layers=layers, **kwargs))


def preact_resnet18(weights=None, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-18. `weights`: a local checkpoint of this model."""
    return _preact(PreActBasicBlock, [2, 2, 2, 2], weights, **kwargs)


def preact_resnet34(weights=None, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-34."""
    return _preact(PreActBasicBlock, [3, 4, 6, 3], weights, **kwargs)


def preact_resnet50(weights=None, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-50."""
    return _preact(PreActBottleneck, [3, 4, 6, 3], weights, **kwargs)


def preact_resnet101(weights=None, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-101."""
    return _preact(PreActBottleneck, [3, 4, 23, 3], weights, **kwargs)


def preact_resnet152(weights=None, **kwargs) -> PreActResNet:
    """Pre-activation ResNet-152."""
    return _preact(PreActBottleneck, [3, 8, 36, 3], weights, **kwargs)
