"""ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition"), ResNeXt and Wide ResNet
with torchvision's constructor arguments, state_dict keys and numbers, on cnnfast's fused ops:

- bn1 -> relu -> conv2 (and bn2 -> relu -> conv3) run as one BN-ReLU-conv that keeps only its input:
  the normalised and rectified tensors are recomputed in backward, never stored;
- the block tail relu(bn(x) + identity) runs as one BN-add-ReLU that keeps only its inputs (in the
  blocks without a projection; see `_tail`);
- the stem's BN -> ReLU -> max-pool keeps the convolution's output and a uint8 argmax, nothing else.

The modules are torchvision's (nn.Conv2d, nn.BatchNorm2d, nn.Linear under the same names), so its
checkpoints load with strict=True; only the forward differs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from cnnfast import reference_models
from cnnfast.models._weights import build
from cnnfast.nn._fusable import fusable_activation
from cnnfast.nn.conv import bn_relu_conv_modules
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.residual import bn_add_relu_module

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _tail(norm: nn.Module, out: torch.Tensor, x: torch.Tensor, downsample: nn.Module | None) -> torch.Tensor:
    """relu(norm(out) + identity). BN-add-ReLU keeps its inputs, out and the identity: without a
    projection the identity is the block's input, which conv1 keeps anyway, so the ReLU's output
    is never stored. With one, the identity is the projection's BatchNorm output, which nothing
    else keeps, while the ReLU's output is the next block's input, kept there anyway: so that tail
    runs as torch's BN, add and ReLU (the ReLU keeping its output), which stores less."""
    if downsample is None:
        return bn_add_relu_module(norm, out, x)
    return torch.relu(norm(out) + downsample(x))


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1 -> bn1 -> relu -> conv2 -> bn2, + identity, relu."""
    expansion: int = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)  # applied by the fused ops while a plain nn.ReLU without hooks
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fusable_activation(self.relu):  # hooked or replaced: torchvision's forward, which calls it
            return reference_models.BasicBlock.forward(self, x)
        return _tail(self.bn2, bn_relu_conv_modules(self.bn1, self.conv2, self.conv1(x)), x, self.downsample)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride in conv2): conv1 -> bn1 -> relu -> conv2 ->
    bn2 -> relu -> conv3 -> bn3, + identity, relu."""
    expansion: int = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)  # applied by the fused ops while a plain nn.ReLU without hooks
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fusable_activation(self.relu):  # hooked or replaced: torchvision's forward, which calls it
            return reference_models.Bottleneck.forward(self, x)
        out = bn_relu_conv_modules(self.bn1, self.conv2, self.conv1(x))
        return _tail(self.bn3, bn_relu_conv_modules(self.bn2, self.conv3, out), x, self.downsample)


class ResNet(nn.Module):
    """torchvision.models.ResNet: the same arguments, children and keys (conv1, bn1, relu, maxpool,
    layer1..layer4, avgpool, fc), and forward calling `_forward_impl`, which a subclass may override
    as it would torchvision's. The ReLUs are part of the fused ops while each `relu` child is a
    plain nn.ReLU without hooks; where one is replaced or hooked (another activation, guided
    backprop, Grad-CAM), its block or the stem runs as torchvision's, calling it."""
    classifier_name = "fc"  # replaced when a checkpoint's num_classes differs; kept by freeze_backbone

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: Sequence[int], num_classes: int = 1000,
                 zero_init_residual: bool = False, groups: int = 1, width_per_group: int = 64,
                 replace_stride_with_dilation: Sequence[bool] | None = None,
                 norm_layer: Callable[..., nn.Module] | None = None) -> None:
        super().__init__()
        self._norm_layer = norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes = 64
        self.dilation = 1
        replace_stride_with_dilation = replace_stride_with_dilation or [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)  # applied by the fused ops while a plain nn.ReLU without hooks
        # Keeps a uint8 argmax for backward; the ReLU output it pools is never stored.
        self.maxpool = MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2, replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], 2, replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], 2, replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:  # each residual branch starts at zero (Goyal et al. 2017)
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None and last_bn.weight is not None:
                    nn.init.constant_(last_bn.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                        norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                         dilation=self.dilation, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        # The stem's relu fused while it is a plain nn.ReLU without hooks, as in the blocks.
        x = self.maxpool(bn_add_relu_module(self.bn1, x) if fusable_activation(self.relu) else self.relu(self.bn1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As torchvision's: subclasses override _forward_impl (to return layer4's features, say).
        return self._forward_impl(x)


def _resnet(block, layers, weights, **kwargs) -> ResNet:
    return build(ResNet, weights, dict(block=block, layers=layers, **kwargs))


def resnet18(weights=None, **kwargs) -> ResNet:
    """ResNet-18. `weights`: a local checkpoint path (a torchvision one loads as it is)."""
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, **kwargs)


def resnet34(weights=None, **kwargs) -> ResNet:
    """ResNet-34."""
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, **kwargs)


def resnet50(weights=None, **kwargs) -> ResNet:
    """ResNet-50 (v1.5, as torchvision's)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, **kwargs)


def resnet101(weights=None, **kwargs) -> ResNet:
    """ResNet-101."""
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, **kwargs)


def resnet152(weights=None, **kwargs) -> ResNet:
    """ResNet-152."""
    return _resnet(Bottleneck, [3, 8, 36, 3], weights, **kwargs)


def resnext50_32x4d(weights=None, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d (Xie et al. 2017)."""
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, groups=32, width_per_group=4, **kwargs)


def resnext101_32x8d(weights=None, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d."""
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, groups=32, width_per_group=8, **kwargs)


def wide_resnet50_2(weights=None, **kwargs) -> ResNet:
    """Wide ResNet-50-2 (Zagoruyko and Komodakis 2016): bottlenecks twice as wide."""
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, width_per_group=64 * 2, **kwargs)


def wide_resnet101_2(weights=None, **kwargs) -> ResNet:
    """Wide ResNet-101-2."""
    return _resnet(Bottleneck, [3, 4, 23, 3], weights, width_per_group=64 * 2, **kwargs)
