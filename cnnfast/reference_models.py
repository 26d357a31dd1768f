"""Plain torch.nn architectures written as torchvision writes them: the independent references of
cnnfast.models in the tests and the eager baselines of the benchmarks (torchvision need not be
installed). Only torch.nn modules and their forward, no cnnfast op."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class AlexNet(nn.Module):
    """torchvision.models.alexnet.AlexNet."""

    def __init__(self, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(9216, 4096), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNetPaper(nn.Module):
    """Krizhevsky et al. 2012 with torch.nn's ReLU, LocalResponseNorm (alpha = 1e-4 * n: torch
    divides by n, the paper does not) and MaxPool2d, under cnnfast.models.AlexNetPaper's names."""

    def __init__(self, num_classes=1000, groups=2, dropout=0.5):
        super().__init__()

        def norm_pool():
            return nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0),
                                 nn.MaxPool2d(3, 2))
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 96, 11, 4)), ("norm_pool1", norm_pool()),
            ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=groups)), ("norm_pool2", norm_pool()),
            ("conv3", nn.Conv2d(256, 384, 3, padding=1)), ("relu3", nn.ReLU()),
            ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=groups)), ("relu4", nn.ReLU()),
            ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=groups)), ("relu5", nn.ReLU()),
            ("pool5", nn.MaxPool2d(3, 2))]))
        self.classifier = nn.Sequential(OrderedDict([
            ("dropout6", nn.Dropout(dropout)), ("fc6", nn.Linear(9216, 4096)), ("relu6", nn.ReLU()),
            ("dropout7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),
            ("fc8", nn.Linear(4096, num_classes))]))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride, dilation if kernel == 3 else 0, dilation, groups, bias=False)


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision.models.resnet.ResNet (without dilation and norm_layer options)."""

    def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64):
        super().__init__()
        self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv(self.inplanes, planes * block.expansion, 1, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(depth: int, **kwargs) -> ResNet:
    """torchvision's resnet18/34/50/101/152 (kwargs: num_classes, groups, width_per_group)."""
    block, layers = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                     50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3]),
                     152: (Bottleneck, [3, 8, 36, 3])}[depth]
    return ResNet(block, layers, **kwargs)


class _DenseLayer(nn.Module):
    """torchvision.models.densenet._DenseLayer (without its checkpointing option)."""

    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features):
        bottleneck = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        new = self.conv2(self.relu2(self.norm2(bottleneck)))
        return nn.functional.dropout(new, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else new


class _DenseBlock(nn.ModuleDict):
    """torchvision.models.densenet._DenseBlock."""

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(num_input_features + i * growth_rate, growth_rate,
                                                              bn_size, drop_rate))

    def forward(self, init_features):
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """torchvision.models.densenet._Transition."""

    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision.models.densenet.DenseNet."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4, drop_rate=0.0,
                 num_classes=1000):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, num_init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(num_layers, num_features, bn_size, growth_rate,
                                                                       drop_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x):
        out = nn.functional.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(out, (1, 1)), 1))


# ---- timm 1.0.x's DPN (timm/models/dpn.py) ------------------------------------------------------


def _timm_padding(kernel_size, stride):  # timm's create_conv2d: ((stride - 1) + (kernel_size - 1)) // 2
    return ((stride - 1) + (kernel_size - 1)) // 2


class BnActConv2d(nn.Module):
    def __init__(self, in_chs, out_chs, kernel_size, stride, groups=1):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=0.001)
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, _timm_padding(kernel_size, stride),
                              groups=groups, bias=False)

    def forward(self, x):
        return self.conv(F.relu(self.bn(x)))


class ConvBnAct(nn.Module):
    def __init__(self, out_chs, kernel_size):
        super().__init__()
        self.conv = nn.Conv2d(3, out_chs, kernel_size, 2, _timm_padding(kernel_size, 2), bias=False)
        self.bn = nn.BatchNorm2d(out_chs, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BnAct(nn.Module):
    def __init__(self, in_chs):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_chs, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(x))


class DualPathBlock(nn.Module):
    def __init__(self, in_chs, num_1x1_a, num_3x3_b, num_1x1_c, inc, groups, block_type, b):
        super().__init__()
        self.num_1x1_c, self.b = num_1x1_c, b
        key_stride = 2 if block_type == "down" else 1
        self.proj = None if block_type == "normal" else "c1x1_w_s2" if key_stride == 2 else "c1x1_w_s1"
        if self.proj is not None:
            setattr(self, self.proj, BnActConv2d(in_chs, num_1x1_c + 2 * inc, 1, key_stride))
        self.c1x1_a = BnActConv2d(in_chs, num_1x1_a, 1, 1)
        self.c3x3_b = BnActConv2d(num_1x1_a, num_3x3_b, 3, key_stride, groups)
        if b:
            self.c1x1_c = BnAct(num_3x3_b)
            self.c1x1_c1 = nn.Conv2d(num_3x3_b, num_1x1_c, 1, bias=False)
            self.c1x1_c2 = nn.Conv2d(num_3x3_b, inc, 1, bias=False)
        else:
            self.c1x1_c = BnActConv2d(num_3x3_b, num_1x1_c + inc, 1, 1)

    def forward(self, x):
        x_s = getattr(self, self.proj)(x) if self.proj is not None else x
        x = self.c1x1_c(self.c3x3_b(self.c1x1_a(x)))
        if self.b:
            out1, out2 = self.c1x1_c1(x), self.c1x1_c2(x)
        else:
            out1, out2 = x[:, :self.num_1x1_c], x[:, self.num_1x1_c:]
        return torch.cat([x_s[:, :self.num_1x1_c] + out1, x_s[:, self.num_1x1_c:], out2], dim=1)


class DPN(nn.Module):
    """timm.models.dpn.DPN (timm 1.0.x), its keys; the dual-path state as one concatenated tensor."""

    def __init__(self, k_sec, inc_sec, k_r, groups, num_classes=1000, small=False, num_init_features=64, b=False,
                 drop_rate=0.0):
        super().__init__()
        self.drop_rate = drop_rate
        blocks = OrderedDict()
        blocks["conv1_1"] = ConvBnAct(num_init_features, 3 if small else 7)
        blocks["conv1_pool"] = nn.MaxPool2d(3, 2, 1)
        in_chs = num_init_features
        for i, (bw_base, depth, inc) in enumerate(zip((64, 128, 256, 512), k_sec, inc_sec)):
            bw, r = bw_base * (1 if small else 4), k_r * bw_base // 64
            blocks[f"conv{i + 2}_1"] = DualPathBlock(in_chs, r, r, bw, inc, groups, "proj" if i == 0 else "down", b)
            in_chs = bw + 3 * inc
            for j in range(2, depth + 1):
                blocks[f"conv{i + 2}_{j}"] = DualPathBlock(in_chs, r, r, bw, inc, groups, "normal", b)
                in_chs += inc
        blocks["conv5_bn_ac"] = BnAct(in_chs)
        self.features = nn.Sequential(blocks)
        self.classifier = nn.Conv2d(in_chs, num_classes, 1)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        x = F.dropout(x, self.drop_rate, self.training)
        return torch.flatten(self.classifier(x), 1)
