"""cnnfast.convert: swaps cnnfast's modules into any nn.Module tree, keeping its weights.

One walk over the tree, children first, with one table of rules (RULES): each rule says which
modules it takes and builds their cnnfast replacement from the same parameter and buffer tensors
(with inplace=True the very tensors of `model`, so an optimizer built on them keeps working).
State_dict keys do not change, so checkpoints of the original model still load. A module a rule
takes but cannot stand in for exactly (hooks that would no longer run, another activation than
ReLU, tensors registered where cnnfast's module has no place for them, a compiled module) is left
alone and reported.
"""
from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
from torch import nn

from cnnfast import _layouts
from cnnfast.nn._fusable import has_hooks
from cnnfast.nn.densenet import DenseBlock, why_not_shared_buffer
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.sequential import FusedSequential, fusable_runs

__all__ = ["ConversionReport", "convert"]


@dataclass
class ConversionReport:
    """What convert did: `swapped` lists (name, original class, cnnfast class); `left_alone` lists
    (name, class, why) for the modules it recognised but could not swap; `notes` maps the name of a
    swapped module to what the swap changes for code around it (a swapped dense block's output must
    not be modified in place)."""
    swapped: list = field(default_factory=list)
    left_alone: list = field(default_factory=list)
    notes: dict = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"cnnfast.convert: {len(self.swapped)} modules swapped, {len(self.left_alone)} left alone"]
        lines += [f"  {name or '<model>'}: {old} -> {new}" + (f" ({self.notes[name]})" if name in self.notes else "")
                  for name, old, new in self.swapped]
        lines += [f"  {name or '<model>'}: {cls} left alone ({why})" for name, cls, why in self.left_alone]
        return "\n".join(lines)


def _adopt(cls: type, module: nn.Module) -> nn.Module:
    """An instance of `cls` that is `module` in all but its class: its children, parameters and
    buffers (registered on it directly too), state_dict hooks, plain attributes (torchvision's
    stride, inplanes, groups, base_width, ...) and mode. nn.Module's dicts are shared with `module`,
    not copied, so handles of hooks registered on `module` still remove them. (_swap refuses the
    modules whose instance holds something bound to the old object: Module.compile()'s cache, an
    instance-level forward.)"""
    new = cls.__new__(cls)
    vars(new).update(vars(module))
    return new


# A new module starts in training mode: each keeps the mode of the one it replaces (an eval model
# stays eval). The other rules adopt the original's attributes, its mode with them.
def _lrn(m: nn.LocalResponseNorm) -> nn.Module:
    return LocalResponseNorm(m.size, m.alpha, m.beta, m.k).train(m.training)


def _max_pool(m: nn.MaxPool2d) -> nn.Module:
    return MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, m.return_indices, m.ceil_mode).train(m.training)


_FUSED_SUBCLASSES: dict[type, type] = {}


def fused_subclass(cls: type) -> type:
    """FusedSequential's forward on a Sequential subclass `cls`, made once per class. Made at run
    time, it cannot be found by name: its instances pickle (torch.save of a whole model, spawned
    workers) as `cls`, by reference, and this function, which makes the class again on loading."""
    if cls not in _FUSED_SUBCLASSES:
        def __reduce_ex__(self, protocol):
            return _new_fused, (cls,), self.__dict__

        _FUSED_SUBCLASSES[cls] = type(f"Fused{cls.__name__}", (FusedSequential, cls), {"__reduce_ex__": __reduce_ex__})
    return _FUSED_SUBCLASSES[cls]


def _new_fused(cls: type) -> nn.Module:
    fused = fused_subclass(cls)
    return fused.__new__(fused)


def _sequential(m: nn.Sequential) -> nn.Module:
    if type(m) is nn.Sequential:
        return _adopt(FusedSequential, m)
    # A subclass without a forward of its own (torchvision's _Transition): the same object, its
    # class given FusedSequential's forward, so isinstance checks and its attributes still hold.
    m.__class__ = fused_subclass(type(m))
    return m


def _resnet_piece(m: nn.Module) -> nn.Module:
    from cnnfast.models import resnet
    cls = getattr(resnet, type(m).__name__)
    new = _adopt(cls, m)
    if cls is not resnet.ResNet and not hasattr(new, "downsample"):
        new.downsample = None
    return new


def _dense_block(m: nn.Module) -> nn.Module:
    layers = list(m.children())  # torchvision's _DenseLayers: their children move into cnnfast's
    first = layers[0]
    growth_rate = first.conv2.out_channels
    with torch.device("meta"):  # every parameter is replaced by the original's below: allocate none
        block = DenseBlock(len(layers), first.norm1.num_features, first.conv1.out_channels // growth_rate,
                           growth_rate, float(first.drop_rate))
    for old, new in zip(layers, block.values()):
        for child in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            setattr(new, child, getattr(old, child))
        new.drop_rate = float(old.drop_rate)
        new.training = old.training
    block.training = m.training
    return block


def _dense_block_refusal(m: nn.Module) -> str | None:
    # The layers are rebuilt as cnnfast's: their own hooks would be lost, and the shared buffer
    # computes only the layer torchvision builds.
    return next(filter(None, map(why_not_shared_buffer, m.children())), None)


class Rule(NamedTuple):
    description: str
    matches: Callable[[nn.Module], bool]
    build: Callable[[nn.Module], nn.Module]
    # Why a matching module cannot be swapped exactly, or None.
    refuse: Callable[[nn.Module], str | None] = lambda m: None
    # What the swap changes for the code around the module, said in the report, or None.
    note: str | None = None


# The shared buffer is the block's output and its backward reads it: torch.cat's output, which the
# original block returns, is not read by its backward, so code modifying it in place used to work.
_DENSE_BLOCK_NOTE = ("its output is the buffer its backward reads: modifying it in place, as an nn.ReLU(inplace=True) "
                     "right after the block does, makes backward raise torch's in-place error")


def _plain_sequential(m: nn.Module) -> bool:
    # A Sequential subclass with a forward of its own does more than run its children in order.
    return isinstance(m, nn.Sequential) and not isinstance(m, FusedSequential) \
        and type(m).forward is nn.Sequential.forward and fusable_runs(m) > 0


def _resnet_refusal(m: nn.Module) -> str | None:
    # A relu with hooks (Grad-CAM, guided backprop) is no reason: cnnfast's block calls it, unfused,
    # for as long as it has them (cnnfast/models/resnet.py).
    if type(m.relu) is not nn.ReLU:
        return f"its activation is {type(m.relu).__name__}, not a plain nn.ReLU"
    return None


RULES = (
    Rule("LocalResponseNorm", lambda m: type(m) is nn.LocalResponseNorm, _lrn),
    Rule("MaxPool2d (uint8 argmax)", lambda m: type(m) is nn.MaxPool2d, _max_pool),
    Rule("Sequential with BN-ReLU(-Conv2d), ReLU-LRN-MaxPool2d runs or AvgPool2d", _plain_sequential, _sequential),
    Rule("torchvision ResNet block / stem",
         lambda m: _layouts.resnet_layout(m) is not None and type(m).__module__ != "cnnfast.models.resnet",
         _resnet_piece, _resnet_refusal),
    Rule("torchvision DenseNet block", _layouts.torchvision_dense_block, _dense_block, _dense_block_refusal,
         _DENSE_BLOCK_NOTE),
)


def _is_compiled(module: nn.Module) -> bool:
    """Whether `module` is torch.compile's wrapper, whose compiled code calls the module it wrapped,
    whatever convert puts in that module's place. (Looked up, not imported: importing dynamo
    doubles cnnfast's import time, and without it there is no such wrapper.)"""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


_COMPILED_WHY = "is compiled (torch.compile): convert the model first, then compile what convert returns"


def _convert(module: nn.Module, name: str, report: ConversionReport, done: dict) -> nn.Module:
    """`module` converted, its children first. `done` maps id(original) -> converted, so that a
    module registered under two names (or in two places) stays one module, converted once."""
    if id(module) in done:
        return done[id(module)][1]
    if _is_compiled(module):
        report.left_alone.append((name, type(module).__name__, _COMPILED_WHY))
        return module
    for child_name, child in list(module._modules.items()):  # every name, shared children included
        if child is None:
            continue
        new_child = _convert(child, f"{name}.{child_name}" if name else child_name, report, done)
        if new_child is not child:
            setattr(module, child_name, new_child)
    new = _swap(module, name, report)
    done[id(module)] = (module, new)  # the original kept alive, so that its id stays its own
    return new


_STATE_DICT_HOOKS = ("_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                     "_load_state_dict_post_hooks")


def _why_not_swappable(module: nn.Module) -> str | None:
    """Why no rule may swap `module`, whatever it is, or None."""
    if has_hooks(module):
        return "it has hooks, which would no longer run"
    if "_compiled_call_impl" in vars(module) and module._compiled_call_impl is not None:
        # Module.compile() keeps a call bound to this object: a swapped module would still run it.
        return "it was compiled with Module.compile(): convert before compiling"
    replaced = [name for name in _layouts.FORWARD_METHODS if name in vars(module)]
    if replaced:
        return f"its {replaced[0]} is replaced on the instance, which cnnfast's forward would not run"
    if any(getattr(module, hooks, None) for hooks in _STATE_DICT_HOOKS):
        # torch binds them to this object (a weak reference): they would be called with a dead module.
        return "it has state_dict hooks, which would no longer run"
    return None


def _what_would_be_lost(module: nn.Module, new: nn.Module) -> str | None:
    """What `module`'s tree holds that its replacement `new` does not: tensors registered where
    cnnfast's module has no place for them (a buffer on an nn.MaxPool2d, a parameter on a dense
    layer), hooks on the modules a rule rebuilds (torchvision's dense layers)."""
    lost = module.state_dict().keys() - new.state_dict().keys()
    if lost:
        return f"its {', '.join(sorted(lost)[:3])} would have no place in cnnfast's module"
    kept = {id(m) for m in new.modules()}
    for inner_name, inner in module.named_modules():
        why = _why_not_swappable(inner) if inner is not module and id(inner) not in kept else None
        if why is not None:
            return f"its {inner_name} is rebuilt, but {why}"
    return None


def _swap(module: nn.Module, name: str, report: ConversionReport) -> nn.Module:
    for rule in RULES:
        if rule.matches(module):
            old = type(module).__name__
            why = _why_not_swappable(module) or rule.refuse(module)
            if why is None:
                new = rule.build(module)
                why = _what_would_be_lost(module, new)
            if why is not None:
                report.left_alone.append((name, old, why))
                return module
            report.swapped.append((name, old, f"cnnfast {type(new).__name__}"))
            if rule.note is not None:
                report.notes[name] = rule.note
            return new
    return module


def convert(model: nn.Module, inplace: bool = False):
    """Returns (converted model, ConversionReport). Swaps, keeping the weights:
    nn.LocalResponseNorm and nn.MaxPool2d for cnnfast's; nn.Sequential holding BatchNorm2d -> ReLU
    -> Conv2d, BatchNorm2d -> ReLU or ReLU -> LocalResponseNorm -> MaxPool2d runs or an
    nn.AvgPool2d for a FusedSequential (same children, the runs through one op each); torchvision's
    ResNet BasicBlock / Bottleneck / ResNet for cnnfast.models.resnet's and its _DenseBlock for
    cnnfast.nn.DenseBlock. inplace=False converts a deep copy and leaves `model` as it was (a copy
    torch leaves uncompiled: call .compile() on what convert returns where `model` had been);
    inplace=True converts `model`'s children in place, but a top module that is itself swapped (a
    torchvision ResNet) comes back as a new object: use the returned model. A module registered
    under several names stays one module; every module keeps its training mode.

    A swapped dense block returns its shared buffer, which its backward reads: an in-place op on the
    block's output (an nn.ReLU(inplace=True) right after it) then makes backward raise torch's
    "modified by an inplace operation" error, where the original's torch.cat output could be
    modified. report.notes says so for each swapped block; make that op out-of-place."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"cnnfast.convert: model must be an nn.Module, got {type(model).__name__}")
    if _is_compiled(model):
        raise TypeError(f"cnnfast.convert: model {_COMPILED_WHY}")
    if not inplace:
        model = copy.deepcopy(model)
    report = ConversionReport()
    return _convert(model, "", report, {}), report
