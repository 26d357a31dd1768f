"""Every cnnfast model by name, and the transfer-learning helper."""
from __future__ import annotations

import difflib
import importlib
from typing import Callable

from torch import nn

# By module path: cnnfast.models.alexnet, as an attribute, is the alexnet() constructor.
_FAMILIES = tuple(importlib.import_module(f"cnnfast.models.{name}")
                  for name in ("alexnet", "densenet", "dpn", "preact_resnet", "resnet"))

# name -> constructor(weights=None, **kwargs); the lower-case entries of each family's __all__.
_MODELS: dict[str, Callable[..., nn.Module]] = {
    name: getattr(family, name) for family in _FAMILIES for name in family.__all__ if name.islower()}
_MODELS.pop("densenet_bc")  # takes depth and growth_rate: its presets are registered instead


def list_models() -> list[str]:
    """The names get_model takes, sorted."""
    return sorted(_MODELS)


def get_model(name: str, weights=None, **kwargs) -> nn.Module:
    """The model `name` (see list_models()), built with `kwargs` (e.g. num_classes=10). `weights`:
    a local checkpoint path or a state_dict (nothing is downloaded); a checkpoint for another num_classes loads all
    but the classifier, which stays freshly initialised."""
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), _MODELS, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see cnnfast.models.list_models()"
        raise ValueError(f"cnnfast.models.get_model: unknown model {name!r}{hint}")
    return _MODELS[name](weights=weights, **kwargs)


def classifier_of(model: nn.Module) -> str:
    """The name of `model`'s classifier: its `classifier_name` module where that holds the last
    nn.Linear (or 1x1 nn.Conv2d) among its modules, or none (a headless model), otherwise that last
    one. So a head Sequential replacing ResNet's fc trains whole, and a user's own head put in place
    of AlexNet's classifier, longer than torchvision's, is found (its `classifier.6` is a middle
    layer then)."""
    name = getattr(model, "classifier_name", None)
    modules = dict(model.named_modules())
    heads = [key for key, m in modules.items()
             if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))]
    inside = lambda key: key == name or key.startswith(f"{name}.")  # noqa: E731
    # The named module, unless it holds a head that is not the last one (a middle layer now); a
    # named module holding no head at all (num_classes=0, an Identity) is the head of a headless model.
    if name in modules and (not any(map(inside, heads)) or inside(heads[-1])):
        return name
    if not heads:
        raise ValueError(f"cnnfast.models: found no classifier in {type(model).__name__}; name it (head=)")
    return heads[-1]


def freeze_backbone(model: nn.Module, freeze: bool = True, head: str | None = None) -> nn.Module:
    """Transfer learning: freeze=True makes every parameter but the classifier's (`head`, a module
    name; found by classifier_of when None) stop requiring gradients, so that only the new head
    trains; freeze=False makes every parameter trainable again. BatchNorm running statistics still
    update in train mode; call .eval() on the backbone's BatchNorms to keep them too."""
    head = classifier_of(model) if head is None else head
    modules = dict(model.named_modules())
    if head not in modules:
        raise ValueError(f"freeze_backbone: model has no module named {head!r}")
    head_parameters = {id(p) for p in modules[head].parameters()}
    # A headless model (num_classes=0: no head, or a Linear with no outputs): nothing would train.
    if freeze and sum(p.numel() for p in modules[head].parameters()) == 0:
        raise ValueError(f"freeze_backbone: the head {head!r} ({type(modules[head]).__name__}) has no parameters: "
                         f"freezing would leave nothing to train")
    for parameter in model.parameters():
        parameter.requires_grad_(not freeze or id(parameter) in head_parameters)
    return model
