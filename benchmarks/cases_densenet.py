"""Training steps of whole DenseNets: the plain concatenating model ("torch": torchvision's
architecture in torch.nn ops), torchvision's memory_efficient scheme ("torch.checkpoint": each
layer's concatenation and bottleneck run under torch.utils.checkpoint) and cnnfast's shared-buffer
blocks ("cnnfast[...]"), with the same parameters. A row is one step: the gradients of the input
and of every parameter, and one running-statistics update (the checkpointed model does two).
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from benchmarks.harness import Case, Ops, model_step_cases, share_parameters
from cnnfast import models
from cnnfast.nn.densenet import DenseLayer

# (label, constructor, input size, CPU batch, GPU batch)
MODELS = (
    ("DenseNet-121", "densenet121", 224, 2, 64),
    ("DenseNet-BC-100 k12", "densenet_bc_100_k12", 32, 16, 128),
)


def _checkpointed_layer_forward(self: DenseLayer, input):
    """torchvision's _DenseLayer.forward with memory_efficient=True: concatenation, BN1, ReLU and
    the 1x1 convolution recomputed in backward by torch.utils.checkpoint."""
    features = list(input) if isinstance(input, (list, tuple)) else [input]

    def bottleneck(*inputs):
        return self.conv1(self.relu1(self.norm1(torch.cat(inputs, 1))))

    if any(f.requires_grad for f in features):
        b = torch.utils.checkpoint.checkpoint(bottleneck, *features, use_reentrant=False)
    else:
        b = bottleneck(*features)
    new = self.conv2(self.relu2(self.norm2(b)))
    return F.dropout(new, p=self.drop_rate, training=self.training) if self.drop_rate > 0 else new


def three_models(build, device, dtype) -> dict[str, torch.nn.Module]:
    """{"plain", "checkpoint", "cnnfast"}: `build(memory_efficient=...)` three ways, in training
    mode, sharing the plain model's parameters."""
    torch.manual_seed(0)
    plain = build(memory_efficient=False).to(device, dtype)
    fused = build(memory_efficient=True).to(device, dtype)
    checkpointed = build(memory_efficient=False).to(device, dtype)
    for model in (fused, checkpointed):
        share_parameters(model, plain)
    for module in checkpointed.modules():
        if isinstance(module, DenseLayer):
            module.forward = types.MethodType(_checkpointed_layer_forward, module)
    for model in (plain, fused, checkpointed):
        model.train()
    return {"plain": plain, "checkpoint": checkpointed, "cnnfast": fused}


def densenet(device, dtype, constructor: str) -> Ops:
    built = three_models(getattr(models, constructor), device, dtype)
    return Ops(torch=built["plain"], cnnfast=built["cnnfast"], parameters=tuple(built["plain"].parameters()),
               checkpoint=built["checkpoint"])


def cases(device: str, quick: bool, variants: list[str]) -> list[Case]:
    """Training steps only (a model's forward alone is the BN-ReLU-conv rows' business)."""
    return model_step_cases(f"{__name__}:densenet", MODELS, device, quick, variants, ("torch.checkpoint",))
