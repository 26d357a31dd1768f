"""Recognising torchvision's building blocks, for cnnfast.convert and cnnfast.fuse_for_inference,
without importing torchvision: by class name, child names, and where the class's forward is
written (a copy with a forward of its own, or timm's BasicBlock with act1, drop_block, ..., is not
mistaken for one)."""
from __future__ import annotations

from torch import nn

# Class name -> (children it must have, children it may have, its (conv, bn) pairs in forward order,
# each conv feeding only its bn).
RESNET_LAYOUTS = {
    "BasicBlock": ({"conv1", "bn1", "relu", "conv2", "bn2"}, {"downsample"}, (("conv1", "bn1"), ("conv2", "bn2"))),
    "Bottleneck": ({"conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "relu"}, {"downsample"},
                   (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))),
    "ResNet": ({"conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc"}, set(),
               (("conv1", "bn1"),)),
}
# Where the forward of those classes is written: torchvision's, cnnfast's plain twin, cnnfast's own.
RESNET_FORWARDS = {"torchvision.models.resnet", "cnnfast.reference_models", "cnnfast.models.resnet"}
# torchvision's ResNet.forward (and cnnfast's) only calls _forward_impl: a subclass overriding that
# (to return features, say) has a forward of its own all the same, which convert leaves alone and
# whose stem fuse_for_inference does not fold.
FORWARD_METHODS = ("forward", "_forward_impl")


def forward_written_in(module: nn.Module, modules) -> bool:
    """Whether every forward method `module`'s class has is written in one of `modules`."""
    return all(getattr(type(module), name).__module__ in modules
               for name in FORWARD_METHODS if hasattr(type(module), name))


def has_layout(module: nn.Module, required: set, optional: set) -> bool:
    names = {name for name, _ in module.named_children()}
    return required <= names <= required | optional


def resnet_layout(module: nn.Module):
    """The RESNET_LAYOUTS entry `module` follows (torchvision's or cnnfast's ResNet pieces), or None."""
    layout = RESNET_LAYOUTS.get(type(module).__name__)
    if layout is None or not forward_written_in(module, RESNET_FORWARDS) \
            or not has_layout(module, layout[0], layout[1]):
        return None
    if any(not isinstance(getattr(module, conv), nn.Conv2d) for conv, _ in layout[2]):
        return None
    return layout


def torchvision_dense_block(module: nn.Module) -> bool:
    """torchvision's _DenseBlock: denselayerN children with norm1, relu1, conv1, norm2, relu2, conv2."""
    layers = list(module.children())
    return (type(module).__name__ == "_DenseBlock" and bool(layers)
            and type(module).forward.__module__ in ("torchvision.models.densenet", "cnnfast.reference_models")
            and all(type(layer).__name__ == "_DenseLayer" and hasattr(layer, "drop_rate")
                    and type(layer).forward.__module__ == type(module).forward.__module__
                    and has_layout(layer, {"norm1", "relu1", "conv1", "norm2", "relu2", "conv2"}, set())
                    for layer in layers))
