"""DenseNet (Huang et al. 2017, "Densely Connected Convolutional Networks") on cnnfast's
memory-efficient dense blocks, with torchvision's constructor arguments and state_dict keys, and
DenseNet-BC for CIFAR as the paper trains it."""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from cnnfast.models._weights import build
from cnnfast.nn.densenet import DenseBlock, Transition
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.sequential import FusedSequential

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet264", "densenet_bc",
           "densenet_bc_100_k12", "densenet_bc_250_k24", "densenet_bc_190_k40"]


class DenseNet(nn.Module):
    """torchvision.models.DenseNet's architecture and keys (features.conv0 ... features.norm5,
    classifier). memory_efficient=True (the default here) runs each block in one shared buffer with
    BN-ReLU recomputed in backward (cnnfast.nn.DenseBlock); False is the plain concatenating
    DenseNet. The same numbers either way.

    small_inputs=True gives the CIFAR stem of the paper (one 3x3 convolution of num_init_features
    channels, no pooling; densenet_bc passes 2 * growth_rate) in place of ImageNet's (7x7 stride 2,
    BN, ReLU, 3x3 max-pool);
    compression is the transitions' channel factor (0.5 in DenseNet-BC and torchvision)."""
    classifier_name = "classifier"

    def __init__(self, growth_rate: int = 32, block_config=(6, 12, 24, 16), num_init_features: int = 64,
                 bn_size: int = 4, drop_rate: float = 0.0, num_classes: int = 1000, memory_efficient: bool = True,
                 small_inputs: bool = False, compression: float = 0.5, recompute_bottleneck: bool = False):
        super().__init__()
        if small_inputs:
            stem = [("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, stride=1, padding=1, bias=False))]
        else:
            stem = [("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    # cnnfast's max-pool keeps a uint8 argmax for backward, not its input and int64 indices.
                    ("pool0", (MaxPool2d if memory_efficient else nn.MaxPool2d)(kernel_size=3, stride=2, padding=1))]
        # FusedSequential runs norm0 -> relu0 as one BN-ReLU, whose output only the max-pool reads
        # (keeping a uint8 argmax of it): the ReLU's output is never stored.
        self.features = (FusedSequential if memory_efficient else nn.Sequential)(OrderedDict(stem))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", DenseBlock(
                num_layers, num_features, bn_size, growth_rate, drop_rate, memory_efficient, recompute_bottleneck))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                out_features = int(num_features * compression)
                self.features.add_module(f"transition{i + 1}", Transition(num_features, out_features,
                                                                          memory_efficient))
                num_features = out_features
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        # torchvision's initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


# torchvision's DenseNet checkpoints from before its layers had named children: 'norm.1' for 'norm1'.
_OLD_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                            r"running_var|num_batches_tracked))$")


def _remap_old_keys(state: dict) -> dict:
    remapped = {}
    for key, value in state.items():
        match = _OLD_LAYER_KEY.match(key)
        remapped[match.group(1) + match.group(2) if match else key] = value
    return remapped


def _densenet(growth_rate, block_config, num_init_features, weights, **kwargs) -> DenseNet:
    return build(DenseNet, weights, dict(growth_rate=growth_rate, block_config=block_config,
                                         num_init_features=num_init_features, **kwargs), _remap_old_keys)


def densenet121(weights=None, **kwargs) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6-12-24-16). `weights`: a local torchvision checkpoint."""
    return _densenet(32, (6, 12, 24, 16), 64, weights, **kwargs)


def densenet161(weights=None, **kwargs) -> DenseNet:
    """DenseNet-161 (growth 48, blocks 6-12-36-24, 96 initial features)."""
    return _densenet(48, (6, 12, 36, 24), 96, weights, **kwargs)


def densenet169(weights=None, **kwargs) -> DenseNet:
    """DenseNet-169 (growth 32, blocks 6-12-32-32)."""
    return _densenet(32, (6, 12, 32, 32), 64, weights, **kwargs)


def densenet201(weights=None, **kwargs) -> DenseNet:
    """DenseNet-201 (growth 32, blocks 6-12-48-32)."""
    return _densenet(32, (6, 12, 48, 32), 64, weights, **kwargs)


def densenet264(weights=None, **kwargs) -> DenseNet:
    """DenseNet-264 (growth 32, blocks 6-12-64-48), as in the paper (torchvision has none)."""
    return _densenet(32, (6, 12, 64, 48), 64, weights, **kwargs)


def densenet_bc(depth: int, growth_rate: int, num_classes: int = 10, weights=None, **kwargs) -> DenseNet:
    """DenseNet-BC for CIFAR (32x32): a 3x3 stem of 2 * growth_rate channels, three dense blocks of
    (depth - 4) / 6 bottleneck layers each, compression 0.5."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"densenet_bc: depth must be 6n + 4 with n >= 1 (e.g. 100, 190, 250), got {depth}")
    layers = (depth - 4) // 6
    return _densenet(growth_rate, (layers,) * 3, 2 * growth_rate, weights, num_classes=num_classes,
                     small_inputs=True, **kwargs)


def densenet_bc_100_k12(weights=None, **kwargs) -> DenseNet:
    """DenseNet-BC (L=100, k=12): 0.8M parameters, the paper's smallest CIFAR model."""
    return densenet_bc(100, 12, weights=weights, **kwargs)


def densenet_bc_250_k24(weights=None, **kwargs) -> DenseNet:
    """DenseNet-BC (L=250, k=24): 15.3M parameters."""
    return densenet_bc(250, 24, weights=weights, **kwargs)


def densenet_bc_190_k40(weights=None, **kwargs) -> DenseNet:
    """DenseNet-BC (L=190, k=40): 25.6M parameters."""
    return densenet_bc(190, 40, weights=weights, **kwargs)
