"""The Triton 1x1 convolution with BatchNorm-ReLU fused into its GEMMs (used by bn_relu_conv2d with
the 'triton' backend): the ops' Triton kernels and fake functions.

Forward: out = W @ relu(x * scale + shift) + bias, the prologue applied to each loaded tile.
Weight gradient: the same prologue recomputes relu(bn(x)) tile by tile. Input gradient: W^T @ dy
with the ReLU mask and BN's two per-channel sums in the epilogue; it returns dz (the gradient of
BN's output), which _bn_relu_backward turns into dx.
"""
from __future__ import annotations

import torch

from cnnfast._extension import extension_loaded
from cnnfast.ops import _checks
from cnnfast.ops._triton import on_device, triton_module
from cnnfast.ops.batch_norm import acc_dtype, channel_viewable


def _weight_2d(weight):
    return weight.reshape(weight.shape[0], weight.shape[1])


def _output(input, weight):
    shape = (input.shape[0], weight.shape[0], input.shape[2], input.shape[3])
    return torch.empty(shape, dtype=input.dtype, device=input.device,
                       memory_format=_checks.output_memory_format(input))


def _forward(input, scale, shift, weight, bias):
    out = _output(input, weight)
    with on_device(input):
        return triton_module("conv1x1_bn_relu").conv1x1_bn_relu_forward(
            channel_viewable(input), scale.contiguous(), shift.contiguous(), _weight_2d(weight).contiguous(),
            None if bias is None else bias.contiguous(), out)


def _weight_grad(grad_output, input, scale, shift):
    with on_device(input):
        grad = triton_module("conv1x1_bn_relu").conv1x1_bn_relu_weight_grad(
            channel_viewable(grad_output), channel_viewable(input), scale.contiguous(), shift.contiguous())
    return grad.reshape(grad.shape[0], grad.shape[1], 1, 1)


def _input_grad(grad_output, input, weight, mean, scale, shift):
    grad_z = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                         memory_format=_checks.output_memory_format(input))
    with on_device(input):
        sum_dz, sum_dz_xmu = triton_module("conv1x1_bn_relu").conv1x1_bn_relu_input_grad(
            channel_viewable(grad_output), channel_viewable(input), _weight_2d(weight).contiguous(),
            mean.contiguous(), scale.contiguous(), shift.contiguous(), grad_z)
    return grad_z, sum_dz, sum_dz_xmu


def _fake_forward(input, scale, shift, weight, bias):
    return _output(input, weight)


def _fake_weight_grad(grad_output, input, scale, shift):
    return grad_output.new_empty((grad_output.shape[1], input.shape[1], 1, 1))


def _fake_input_grad(grad_output, input, weight, mean, scale, shift):
    grad_z = torch.empty(input.shape, dtype=input.dtype, device=input.device,
                         memory_format=_checks.output_memory_format(input))
    sums = input.new_empty((input.shape[1],), dtype=acc_dtype(input, "triton"))
    return grad_z, sums, torch.empty_like(sums)


def _register() -> None:
    for name, kernel, fake in (("_conv1x1_bn_relu_triton", _forward, _fake_forward),
                               ("_conv1x1_bn_relu_weight_grad_triton", _weight_grad, _fake_weight_grad),
                               ("_conv1x1_bn_relu_input_grad_triton", _input_grad, _fake_input_grad)):
        torch.library.register_kernel(f"cnnfast::{name}", ("cpu", "cuda"), kernel)
        torch.library.register_fake(f"cnnfast::{name}", fake)


if extension_loaded():
    _register()
