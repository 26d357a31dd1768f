"""Recognising torchvision's building blocks by their structure (class name and child names), for
cnnfast.convert and cnnfast.fuse_for_inference: torchvision need not be installed, and a
look-alike with other children (timm's BasicBlock has act1, drop_block, ...) is not mistaken for one."""
from __future__ import annotations

from torch import nn

# Class name -> (children it must have, children it may have, its (conv, bn) pairs in forward order,
# each conv feeding only its bn).
RESNET_LAYOUTS = {
    "BasicBlock": ({"conv1", "bn1", "conv2", "bn2"}, {"relu", "downsample"}, (("conv1", "bn1"), ("conv2", "bn2"))),
    "Bottleneck": ({"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}, {"relu", "downsample"},
                   (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))),
    "ResNet": ({"conv1", "bn1", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"}, {"relu"},
               (("conv1", "bn1"),)),
}


def has_layout(module: nn.Module, required: set, optional: set) -> bool:
    names = {name for name, _ in module.named_children()}
    return required <= names <= required | optional


def resnet_layout(module: nn.Module):
    """The RESNET_LAYOUTS entry `module` follows (torchvision's or cnnfast's ResNet pieces), or None."""
    layout = RESNET_LAYOUTS.get(type(module).__name__)
    if layout is None or not has_layout(module, layout[0], layout[1]):
        return None
    if any(not isinstance(getattr(module, conv), nn.Conv2d) for conv, _ in layout[2]):
        return None
    return layout


def torchvision_dense_block(module: nn.Module) -> bool:
    """torchvision's _DenseBlock: denselayerN children with norm1, relu1, conv1, norm2, relu2, conv2."""
    layers = list(module.children())
    return (type(module).__name__ == "_DenseBlock" and bool(layers)
            and all(type(layer).__name__ == "_DenseLayer" and hasattr(layer, "drop_rate")
                    and has_layout(layer, {"norm1", "relu1", "conv1", "norm2", "relu2", "conv2"}, set())
                    for layer in layers))
