"""Building a model and loading a local checkpoint into it (nothing is downloaded), shared by every
model family."""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Callable

import torch
from torch import nn


def load_weights(model: nn.Module, path: str | os.PathLike | dict, classifier: str,
                 remap: Callable[[dict], dict] = lambda state: state) -> nn.Module:
    """Loads `path` (a file holding a state_dict, or a dict holding one under 'state_dict' /
    'model_state_dict' / 'model'; or such a dict itself; keys may carry the prefixes of
    DistributedDataParallel, AveragedModel and torch.compile, and of the attribute of a module holding
    the model, as in Lightning's checkpoints) into `model`
    with strict=True, after `remap` (for older key names). Where the checkpoint's classifier (the
    module named `classifier`) does not fit the model's (another num_classes, or none at all), the
    model keeps its freshly initialised classifier and everything else is loaded, with a warning
    that says so: transfer learning."""
    if isinstance(path, dict):
        state = path  # a state_dict already in memory
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"weights: expected the path of a local checkpoint or a state_dict, got {type(path).__name__}")
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"weights: no checkpoint file at {os.fspath(path)!r} (cnnfast downloads nothing; "
                                f"pass the path of a local file, or a state_dict)")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # torch's message names what the file holds besides tensors; weights_only stays on, as
            # unpickling anything else runs code from the file.
            raise ValueError(f"weights: {os.fspath(path)!r} holds more than tensors ({error}). If it is a whole "
                             f"pickled model, save its state_dict(); if you trust the file, pass what "
                             f"torch.load(path, weights_only=False) gives (a state_dict, or a dict holding one)") \
                from error
    for key in ("state_dict", "model_state_dict", "model"):  # training scripts' and PyTorch tutorials' layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    own = model.state_dict()
    state = remap(_unwrapped(dict(state), set(own)))
    in_head = lambda key: key.startswith(classifier + ".")  # noqa: E731
    theirs = {k: tuple(v.shape) for k, v in state.items() if in_head(k)}
    ours = {k: tuple(v.shape) for k, v in own.items() if in_head(k)}
    if theirs != ours:  # another num_classes, or a headless (num_classes=0) model or checkpoint
        warnings.warn(f"weights: the checkpoint's {classifier} ({_describe(theirs)}) does not fit the model's "
                      f"({_describe(ours)}): everything else is loaded and {classifier} keeps its fresh "
                      f"initialisation (transfer learning); pass the checkpoint's num_classes to load it too",
                      stacklevel=3)
        state = {k: v for k, v in state.items() if not in_head(k)}
        state.update({k: v for k, v in own.items() if in_head(k)})
    model.load_state_dict(state, strict=True)
    return model


# Prefixes of wrappers: DistributedDataParallel's and AveragedModel's 'module.', torch.compile's '_orig_mod.'.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _unwrapped(state: dict, own_keys: set[str]) -> dict:
    """`state` without the prefixes of wrappers, nested in any order (DDP of a compiled model, or
    a compiled DDP), and without torch.optim.swa_utils.AveragedModel's step counter. Where then no
    key is one of the model's (`own_keys`) and all start with one name, that name is the attribute
    of a module holding the model (a LightningModule's `self.model`, any `self.net`): it goes too,
    where that makes keys match (else load_state_dict reports the keys as they were)."""
    if "n_averaged" in state and all(k.startswith("module.") for k in state if k != "n_averaged"):
        state = {k: v for k, v in state.items() if k != "n_averaged"}
    state = candidate = _without_wrappers(state)
    while candidate and own_keys.isdisjoint(candidate) and all("." in k for k in candidate):
        holders = {k.partition(".")[0] for k in candidate}
        if len(holders) != 1:
            break
        candidate = _without_wrappers({k.partition(".")[2]: v for k, v in candidate.items()})
        if not own_keys.isdisjoint(candidate):
            return candidate
    return state


def _without_wrappers(state: dict) -> dict:
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if state and all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k[len(prefix):]: v for k, v in state.items()}


def _describe(head: dict) -> str:
    return ", ".join(f"{k} {list(shape)}" for k, shape in head.items()) or "no parameters"


def build(make: Callable[..., nn.Module], weights, kwargs: dict,
          remap: Callable[[dict], dict] = lambda state: state) -> nn.Module:
    """make(**kwargs), then `weights` (a local checkpoint path, a state_dict, or None) loaded into it.

    torchvision's `progress` and timm's `pretrained=False` are accepted, so that calls written for
    those libraries run unchanged: both are about downloading, which cnnfast never does.
    pretrained=True is refused rather than ignored (it would give random weights silently)."""
    kwargs = dict(kwargs)
    kwargs.pop("progress", None)
    if kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True: cnnfast downloads nothing; pass weights=<path of a local checkpoint> "
                         "(torchvision's or timm's file loads as it is)")
    model = make(**kwargs)
    if weights is not None:
        load_weights(model, weights, model.classifier_name, remap)
    return model
