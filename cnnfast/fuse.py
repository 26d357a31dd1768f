"""cnnfast.fuse_for_inference: folds eval-mode BatchNorm into the convolution before it."""
from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn
from torch.nn.utils import parametrize

from cnnfast import _layouts
from cnnfast.nn._fusable import has_hooks
from cnnfast.nn.sequential import FusedSequential

__all__ = ["fuse_for_inference"]


def _conv_bn_pairs(module: nn.Module):
    """(conv, bn, bn's name in module) for every BatchNorm2d that only ever reads one Conv2d's
    output: consecutive children of an nn.Sequential (run in order by its forward), and the
    conv/bn pairs of torchvision's ResNet layouts (cnnfast._layouts), whose forward is known."""
    if isinstance(module, nn.Sequential) and type(module).forward in (nn.Sequential.forward,
                                                                        FusedSequential.forward):
        named = list(module.named_children())
        for (_, conv), (bn_name, bn) in zip(named, named[1:]):
            yield conv, bn, bn_name
    layout = _layouts.resnet_layout(module)
    if layout is not None:
        for conv_name, bn_name in layout[2]:
            yield getattr(module, conv_name), getattr(module, bn_name), bn_name


def _uses(model: nn.Module) -> Counter:
    """How many times each module and each Parameter (by identity) is registered in `model`."""
    modules = (m for _, m in model.named_modules(remove_duplicate=False))
    parameters = (p for _, p in model.named_parameters(remove_duplicate=False))
    return Counter(map(id, modules)) + Counter(map(id, parameters))


def _foldable(conv, bn, uses: Counter) -> bool:
    # Each used once in the model: folding scales the conv's weight and bias in place, so a conv,
    # or a weight or bias tied to another module's, would change that other use. Plain modules (a
    # parametrized weight is computed on access; hooks would see other values).
    return (type(conv) is nn.Conv2d and type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm) and not bn.training
            and bn.running_mean is not None and bn.num_features == conv.out_channels
            and uses[id(conv)] == 1 and uses[id(bn)] == 1 and not has_hooks(conv) and not has_hooks(bn)
            and not parametrize.is_parametrized(conv)
            and all(uses[id(p)] == 1 for p in (conv.weight, conv.bias) if p is not None))


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
    # In fp64, then rounded once to the convolution's dtype.
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    # Trainable where any folded-in tensor was (BitFit-style fine-tuning trains biases only);
    # frozen where all were.
    trains = any(t is not None and t.requires_grad for t in (conv.weight, conv.bias, bn.weight, bn.bias))
    if conv.bias is not None:  # the same Parameter object, so an optimizer holding it keeps working
        conv.bias.copy_(shift.to(conv.bias.dtype))
        conv.bias.requires_grad_(trains)
    else:
        conv.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=trains)


def fuse_for_inference(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Returns `model` with each eval-mode BatchNorm2d that directly follows a Conv2d folded into it
    (conv.weight scaled, conv.bias set) and replaced by nn.Identity: the same outputs in eval mode,
    one op fewer per pair. Which pairs are folded: consecutive Conv2d -> BatchNorm2d children of an
    nn.Sequential, and conv/bn pairs of torchvision-style (or cnnfast) ResNet blocks. BatchNorms in
    training mode, or after anything but a convolution (pre-activation units), and convolutions used
    twice, parametrized or hooked, or whose weight or bias Parameter is shared with another module
    (tied weights, which folding would change there too), are left as they are.
    inplace=False folds a deep copy and leaves `model` as it was."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cnnfast.fuse_for_inference: model must be an nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("cnnfast.fuse_for_inference: model is in training mode; call model.eval() first "
                         "(folding uses the running statistics, which training would go on changing)")
    if not inplace:
        model = copy.deepcopy(model)
    uses = _uses(model)
    for module in list(model.modules()):
        for conv, bn, bn_name in list(_conv_bn_pairs(module)):
            if _foldable(conv, bn, uses):
                _fold(conv, bn)
                setattr(module, bn_name, nn.Identity())
    return model
