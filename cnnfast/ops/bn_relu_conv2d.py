"""conv2d(relu(batch_norm(x))) keeping only x (and per-channel statistics) for backward.

Eager PyTorch keeps two full-size tensors for this unit: the BN input and the ReLU output. Here
relu(bn(x)) is a temporary of the forward, freed before the op returns, and recomputed in the
backward (one elementwise pass) to feed the convolution's weight gradient.

The convolution is aten's (cuDNN / oneDNN). With the 'triton' backend, a 1x1 convolution (a GEMM)
runs in Triton kernels that apply scale, shift and ReLU while loading their input tiles, so
relu(bn(x)) is never written at all (triton_kernels/conv1x1_bn_relu.py). `auto` does not pick
them yet: no GPU run has compared them with cuDNN (see cnnfast/_backend.py AUTO_CUDA_CHOICE).

Here: the functional API (argument checks, batch statistics, their synchronisation across ranks,
the running-statistics update, once per forward) and the op's fake function. The op's kernel and
its autograd formula are C++ (csrc/composite/bn_relu_conv2d.cpp), for their per-call cost.
"""
from __future__ import annotations

import torch
from torch.utils import flop_counter

from cnnfast import reference
from cnnfast._backend import resolve
from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks, sync_batch_norm
from cnnfast.ops.batch_norm import (acc_dtype, batch_stats, check_batch_norm_parameter, check_running_stats,
                                    check_values_per_channel, normalisation, values_per_channel)

OP = "cnnfast.bn_relu_conv2d"


def bn_relu_conv2d(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None, weight: torch.Tensor,
                   bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, groups: int = 1,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5,
                   process_group=None) -> torch.Tensor:
    """F.conv2d(F.relu(F.batch_norm(input, running_mean, running_var, bn_weight, bn_bias, training,
    momentum, eps)), weight, bias, stride, padding, dilation, groups), keeping only `input` and
    per-channel statistics for backward.

    In training the batch statistics normalise and, where running_mean / running_var are given,
    update them once (running_var with the unbiased variance), as F.batch_norm does. With a
    `process_group` of several ranks, the statistics are those of every rank's batch together, as
    nn.SyncBatchNorm's.
    """
    _checks.check_tensor(input, "input", OP)
    _checks.check_dims(input, "input", OP, allowed=(4,))
    _checks.check_tensor(weight, "weight", OP)
    _checks.check_dims(weight, "weight", OP, allowed=(4,))
    # The BatchNorm's parameters first: it runs first, so a mismatch there is named as torch names it.
    tensors = {"input": input, "weight": weight}
    for name, value in (("running_mean", running_mean), ("running_var", running_var), ("bn_weight", bn_weight),
                        ("bn_bias", bn_bias)):
        if value is not None:
            check_batch_norm_parameter(value, name, input, OP)
            tensors[name] = value
    groups = _checks.check_int(groups, "groups", OP, minimum=1)
    channels = input.shape[1]
    if weight.shape[0] % groups or weight.shape[1] * groups != channels:
        raise _checks.InputError(f"{OP}: weight of shape {tuple(weight.shape)} with groups={groups} does not take "
                                 f"input with {channels} channels (expected weight.shape[1] * groups == {channels} "
                                 f"and weight.shape[0] divisible by groups)")
    if bias is not None:
        _checks.check_tensor(bias, "bias", OP)
        if bias.shape != (weight.shape[0],):
            raise _checks.InputError(f"{OP}: bias must have {weight.shape[0]} values, got shape {tuple(bias.shape)}")
        tensors["bias"] = bias
    _checks.check_same_device(OP, **tensors)
    _checks.check_conv_dtype(weight, "weight", input, OP)
    _checks.check_conv_dtype(bias, "bias", input, OP)
    stride = _checks.pair(stride, "stride", OP, minimum=1)
    dilation = _checks.pair(dilation, "dilation", OP, minimum=1)
    padding_argument = padding
    padding, trim = conv_padding(padding, weight.shape[-2:], stride, dilation)
    spans = [input.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
    if min(spans) <= 0:
        raise _checks.InputError(f"{OP}: the kernel {tuple(weight.shape[2:])} with dilation={dilation} is larger "
                                 f"than the padded input "
                                 f"({input.shape[2] + 2 * padding[0]}x{input.shape[3] + 2 * padding[1]})")
    check_running_stats(running_mean, running_var, training, OP)
    sync_group = sync_batch_norm.group_name(process_group) if training else ""
    # With synchronised statistics one value per rank is fine (as nn.SyncBatchNorm): the check is
    # then on the group's count, after the all-reduce.
    check_values_per_channel(input, training and not sync_group)
    momentum = _checks.check_number(momentum, "momentum", OP)
    eps = _checks.check_number(eps, "eps", OP)

    backend = resolve("bn_relu_conv2d", input, bn_weight, bn_bias, weight, bias)
    if backend == "reference":
        return reference.bn_relu_conv2d(input, running_mean, running_var, bn_weight, bn_bias, weight, bias, stride,
                                        padding_argument if any(trim) else padding, dilation, groups, training,
                                        momentum, eps)
    weight, bias = autocast_conv_parameters(weight, bias, input.device.type)
    with torch.no_grad():
        count = values_per_channel(input)
        mean = var = None
        if training:
            mean, var = batch_stats(input.detach(), backend)
            if sync_group:  # count becomes the group's, a tensor on input's device
                mean, var, count = sync_batch_norm.global_moments(mean, var, count, sync_group)
        mean, invstd = normalisation(mean, var, running_mean, running_var, training, momentum, eps, count,
                                     acc_dtype(input, backend))
    out = torch.ops.cnnfast.bn_relu_conv2d(input, mean, invstd, bn_weight, bn_bias, weight, bias, stride, padding,
                                           dilation, groups, training, backend, sync_group)
    if not any(trim):
        return out
    # An even kernel's padding='same': torch pads one more zero after than before. The op padded
    # both sides by the larger amount; its first row / column is the one torch does not compute.
    # A copy always (contiguous() could return the view where size-1 dims make it look dense).
    return out[:, :, trim[0]:, trim[1]:].clone(memory_format=_checks.output_memory_format(out))


def autocast_conv_parameters(weight, bias, device_type: str):
    """The convolution's weight and bias as autocast runs F.conv2d: in the autocast dtype where
    autocast is on (BN-ReLU stays in the input's dtype)."""
    if not torch.is_autocast_enabled(device_type):
        return weight, bias
    low = torch.get_autocast_dtype(device_type)
    return weight.to(low), None if bias is None else bias.to(low)


def conv_padding(padding, kernel_size, stride, dilation) -> tuple[tuple[int, int], tuple[int, int]]:
    """Conv2d's padding argument (an int, a pair, 'valid' or 'same') as the op's symmetric padding,
    and the rows and columns to drop from the start of its output. 'same' (stride 1) pads
    dilation * (kernel - 1) in all; where that is odd (an even kernel) torch puts the extra zero
    after: the op pads both sides with the larger half and its first output row / column goes."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding != "same":
            raise ValueError(f"{OP}: padding must be an int, a pair of ints, 'valid' or 'same', got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{OP}: padding='same' is not supported for strided convolutions (stride={stride})")
        total = [d * (k - 1) for d, k in zip(dilation, kernel_size)]
        trim = (total[0] % 2, total[1] % 2)
        return (total[0] // 2 + trim[0], total[1] // 2 + trim[1]), trim
    return _checks.pair(padding, "padding", OP, minimum=0), (0, 0)


def _conv_input(r):
    """relu(bn(x)) as the kernel hands it to the convolution (csrc/composite/bn_relu_conv2d.cpp
    `conv_input`): with one channel, a channels_last tensor viewed with contiguous strides."""
    return r.squeeze(1).unsqueeze(1) if r.shape[1] == 1 else r


def _fake(input, mean, invstd, bn_weight, bn_bias, weight, bias, stride, padding, dilation, groups, training,
          backend, sync_group):
    layout = _checks.output_memory_format(input)
    r = _conv_input(torch.empty(input.shape, dtype=weight.dtype, device=input.device, memory_format=layout))
    out = torch.ops.aten.convolution(r, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0],
                                     groups)
    if all(_checks.has_example_value(size) for size in input.shape):
        return out
    # A size known only at run time (a batch cut by a tensor's value): torch's fake convolution
    # then gives up on the layout and says contiguous, where the convolution the kernel runs
    # returns the layout it picks for r's. Ask it about a stand-in of r's layout with example sizes
    # (a batch of 2; spatial sizes the window fits in more than once).
    def example(size, d):
        if _checks.has_example_value(size):
            return size
        return 2 if d == 0 else dilation[d - 2] * (weight.shape[d] - 1) + 1 + 2 * stride[d - 2]
    stand_in = _conv_input(torch.empty([example(size, d) for d, size in enumerate(input.shape)], dtype=weight.dtype,
                                       device=input.device, memory_format=layout))
    picked = torch.ops.aten.convolution(stand_in, weight, bias, list(stride), list(padding), list(dilation), False,
                                        [0, 0], groups)
    return torch.empty(out.shape, dtype=out.dtype, device=out.device,
                       memory_format=_checks.output_memory_format(picked))


def _fake_backward(grad_output, input, mean, invstd, bn_weight, bn_bias, weight, has_bias, stride, padding, dilation,
                   groups, training, backend, sync_group, output_mask):
    need_input, need_bn_weight, need_bn_bias, need_weight, need_bias = output_mask
    grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                             memory_format=_checks.output_memory_format(input)) if need_input else None
    return (grad_input,
            torch.empty_like(bn_weight) if need_bn_weight else None,
            torch.empty_like(bn_bias) if need_bn_bias else None,
            torch.empty_like(weight) if need_weight else None,
            weight.new_empty((weight.shape[0],)) if need_bias and has_bias else None)


def _fake_update_running_stats(running_mean, running_var, mean, var, momentum, count):
    return None


# torch.utils.flop_counter (FlopCounterMode) sees the fused op, not the convolution inside it: its
# formulas are those of aten's convolution and convolution_backward (BN-ReLU's elementwise work
# is not counted, as torch counts none for batch_norm or relu).
def _flops(input_shape, mean, invstd, bn_weight, bn_bias, weight_shape, *args, out_shape, **kwargs) -> int:
    return flop_counter.conv_flop_count(input_shape, weight_shape, out_shape)


def _backward_flops(grad_output_shape, input_shape, mean, invstd, bn_weight, bn_bias, weight_shape, has_bias, stride,
                    padding, dilation, groups, training, backend, sync_group, output_mask, *, out_shape,
                    **kwargs) -> int:
    def swapped(shape):  # (N, C, ...) -> (C, N, ...)
        return [shape[1], shape[0], *shape[2:]]
    flops = 0
    # The gradient of relu(bn(input)), a transposed convolution of grad_output: needed for the
    # input's gradient and for BN's weight and bias gradients alike (torch counts it for either).
    if any(output_mask[:3]):
        flops += flop_counter.conv_flop_count(grad_output_shape, weight_shape, input_shape, transposed=True)
    if output_mask[3]:  # the weight's: relu(bn(input)) convolved with grad_output
        flops += flop_counter.conv_flop_count(swapped(input_shape), swapped(grad_output_shape),
                                              swapped(weight_shape))
    return flops


def _register() -> None:
    # The kernels and the autograd formula are C++ (csrc/composite/).
    torch.library.register_fake("cnnfast::bn_relu_conv2d", _fake)
    torch.library.register_fake("cnnfast::_bn_relu_conv2d_backward", _fake_backward)
    torch.library.register_fake("cnnfast::_update_running_stats", _fake_update_running_stats)
    torch.library.register_fake("cnnfast::_update_running_stats_counted", _fake_update_running_stats)
    flop_counter.register_flop_formula(torch.ops.cnnfast.bn_relu_conv2d)(_flops)
    flop_counter.register_flop_formula(torch.ops.cnnfast._bn_relu_conv2d_backward)(_backward_flops)


if extension_loaded():
    _register()
