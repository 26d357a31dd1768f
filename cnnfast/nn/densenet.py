"""DenseNet's building blocks (Huang et al. 2017), with torchvision's parameter names: DenseLayer,
DenseBlock (memory-efficient: one shared buffer, cnnfast/ops/dense_block.py) and Transition."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnfast._backend import fx_tracing, resolve
from cnnfast.nn._batch_norm_step import batch_norm_step
from cnnfast.nn._fusable import fusable_activation, fusable_norm, has_hooks, plain_conv
from cnnfast.nn._not_scriptable import NotScriptable
from cnnfast.nn.conv import bn_relu_conv_modules
from cnnfast.nn.sequential import FusedSequential
from cnnfast.ops import _checks
from cnnfast.ops.batch_norm import check_values_per_channel
from cnnfast.ops.bn_relu_conv2d import autocast_conv_parameters
from cnnfast.ops.dense_block import BatchNormArgs, DenseBlockConfig, dense_block


class DenseLayer(NotScriptable, nn.Module):
    """BN-ReLU-Conv1x1 (to bn_size * growth_rate channels) then BN-ReLU-Conv3x3 (to growth_rate),
    then dropout: torchvision's _DenseLayer, same submodules (norm1, relu1, conv1, norm2, relu2,
    conv2). Takes a tensor or a list of tensors (concatenated along channels) and returns the
    growth_rate new channels. memory_efficient=True runs both units as BNReLUConv2d does."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float = 0.0,
                 memory_efficient: bool = True):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"DenseLayer: drop_rate must be in [0, 1), got {drop_rate}")
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def forward(self, input) -> torch.Tensor:
        features = torch.cat(input, 1) if isinstance(input, (list, tuple)) else input
        if self.memory_efficient:
            bottleneck = _unit(self.norm1, self.relu1, self.conv1, features)
            new = _unit(self.norm2, self.relu2, self.conv2, bottleneck)
        else:
            bottleneck = self.conv1(self.relu1(self.norm1(features)))
            new = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new = F.dropout(new, p=self.drop_rate, training=self.training)
        return new


def _unit(norm: nn.Module, relu: nn.Module, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """conv(relu(norm(x))): fused where relu is a plain nn.ReLU (the norm and conv checked by
    bn_relu_conv_modules), otherwise as the modules are."""
    if fusable_activation(relu):
        return bn_relu_conv_modules(norm, conv, x)
    return conv(relu(norm(x)))


def why_not_shared_buffer(layer: nn.Module) -> str | None:
    """Why the shared-buffer block cannot compute `layer` (a DenseLayer or torchvision's _DenseLayer)
    exactly, or None: it runs BatchNorm2d -> ReLU -> bias-free 1x1 conv -> BatchNorm2d -> ReLU ->
    bias-free 3x3 conv (padding 1) from the parameters alone, and no hook of the layer or its
    children would run (Grad-CAM, feature extraction)."""
    if has_hooks(layer):
        return "a dense layer has hooks, which would no longer run"
    if not (fusable_norm(layer.norm1) and fusable_norm(layer.norm2)):
        return "a dense layer's norm is not a plain BatchNorm2d without hooks"
    if not (fusable_activation(layer.relu1) and fusable_activation(layer.relu2)):
        return "a dense layer's activation is not a plain nn.ReLU without hooks"
    if not (plain_conv(layer.conv1, 1) and plain_conv(layer.conv2, 3, padding=1)):
        return "a dense layer's convolutions are not bias-free 1x1 and 3x3 (padding 1) nn.Conv2d without hooks"
    return None


class DenseBlock(NotScriptable, nn.ModuleDict):
    """num_layers DenseLayers, each fed every earlier output: torchvision's _DenseBlock (children
    denselayer1, denselayer2, ...). Returns the input followed by every layer's new channels.

    memory_efficient=True (default): one buffer for the whole block, BN-ReLU recomputed in backward,
    batch statistics computed once per channel, memory linear in depth (cnnfast/ops/dense_block.py);
    recompute_bottleneck=True also drops the bottleneck outputs, for the least memory.
    memory_efficient=False: the plain concatenating DenseNet, torch.nn ops throughout, for
    comparison; both give the same numbers.

    The memory-efficient block's output is the buffer its backward reads: an in-place operation on
    it (nn.ReLU(inplace=True) right after the block) makes autograd raise, as it should."""

    def __init__(self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
                 drop_rate: float = 0.0, memory_efficient: bool = True, recompute_bottleneck: bool = False):
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}", DenseLayer(num_input_features + i * growth_rate, growth_rate,
                                                             bn_size, drop_rate, memory_efficient))
        self.growth_rate = growth_rate
        self.memory_efficient = memory_efficient
        self.recompute_bottleneck = recompute_bottleneck

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if fx_tracing():  # torchvision's block: layer by layer, concatenating
            return self._layer_by_layer(input, list(self.values()))
        _checks.check_module_input(input, "DenseBlock")
        layers = list(self.values())
        if layers and input.shape[1] != layers[0].norm1.num_features:
            raise _checks.InputError(f"DenseBlock: expected input with {layers[0].norm1.num_features} channels, got "
                                     f"{input.shape[1]}")
        if layers and input.shape[1] == 0:  # torch.nn's block fails inside its first BatchNorm
            raise _checks.InputError("DenseBlock: input has no channels (num_input_features=0): its first "
                                     "BatchNorm has nothing to normalise")
        backend = resolve("bn_relu_conv2d", input) if self.memory_efficient else "reference"
        # Statistics shared across ranks (nn.SyncBatchNorm, e.g. from convert_sync_bn) need an
        # all-reduce per BatchNorm, which the shared-buffer block does not do: such a block runs
        # layer by layer (each unit still recomputing BN-ReLU, the concatenations kept).
        synchronised = self.training and any(isinstance(m, nn.SyncBatchNorm) for m in self.modules())
        # Dropout as each layer has it set; layers set apart from the others run layer by layer.
        uniform = len({(layer.drop_rate, layer.training) for layer in layers}) <= 1
        # A layer changed after construction (another activation or convolution, a hook) runs by itself.
        as_built = all(type(layer) is DenseLayer and why_not_shared_buffer(layer) is None for layer in layers)
        # torch.jit.trace cannot record the block-level autograd.Function (it fails inside the
        # tracer); traced, the block runs layer by layer, the same numbers through traceable ops.
        tracing = torch.jit.is_tracing()
        if backend == "reference" or synchronised or not uniform or not layers or not as_built or tracing:
            return self._layer_by_layer(input, layers)
        return self._shared_buffer_forward(input, layers, backend)

    @staticmethod
    def _layer_by_layer(input: torch.Tensor, layers: list) -> torch.Tensor:
        features = [input]
        for layer in layers:
            features.append(layer(features))
        return torch.cat(features, 1)

    def _shared_buffer_forward(self, input, layers, backend):
        norms, parameters = [], []
        for i, layer in enumerate(layers):
            first = batch_norm_step(layer.norm1)
            if i == 0:  # where the torch.nn block fails, before any later BatchNorm counts the step
                check_values_per_channel(input, first.use_batch_stats)
            norms.append((BatchNormArgs(*first, layer.norm1.eps),
                          BatchNormArgs(*batch_norm_step(layer.norm2), layer.norm2.eps)))
            conv1, _ = autocast_conv_parameters(layer.conv1.weight, None, input.device.type)
            conv2, _ = autocast_conv_parameters(layer.conv2.weight, None, input.device.type)
            parameters += [layer.norm1.weight, layer.norm1.bias, conv1, layer.norm2.weight, layer.norm2.bias, conv2]
        config = DenseBlockConfig(self.growth_rate, tuple(norms), layers[0].drop_rate, layers[0].training,
                                  self.recompute_bottleneck, backend)
        return dense_block(input, config, parameters)


class Transition(NotScriptable, nn.Sequential):
    """BN-ReLU-Conv1x1 then 2x2 average pooling between dense blocks: torchvision's _Transition
    (children norm, relu, conv, pool). memory_efficient=True runs its children as FusedSequential
    does: BN-ReLU-conv as one op and a pooling that keeps nothing for backward, so of its input,
    only x is kept."""

    def __init__(self, num_input_features: int, num_output_features: int, memory_efficient: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)
        self.memory_efficient = memory_efficient

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return (FusedSequential.forward if self.memory_efficient else nn.Sequential.forward)(self, input)
