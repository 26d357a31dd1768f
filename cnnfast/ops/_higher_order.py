"""What create_graph=True asks of an op's backward: a gradient that has derivatives of its own
(gradient penalties, Hessian-vector products).

cnnfast's backward kernels have no derivatives. Autograd runs a backward formula with grad mode on
exactly when create_graph=True was asked (torch.compile traces backward with it off), so that is
when it matters. The pooling and LRN ops then compute their gradient through torch's own ops from
the same saved tensors (`vjp_through`); the BatchNorm ops, whose saved statistics are detached from
their input, refuse with a clear error instead (`refuse_double_backward`): never a gradient whose
derivatives are silently zero.
"""
from __future__ import annotations

from typing import Callable

import torch


def building_graph() -> bool:
    """True inside a backward run for create_graph=True."""
    return torch.is_grad_enabled()


def vjp_through(forward: Callable[[torch.Tensor], torch.Tensor], input: torch.Tensor,
                grad_output: torch.Tensor) -> torch.Tensor:
    """grad_output's vector-Jacobian product with `forward` at `input` (a saved input, still attached
    to its graph), computed by torch's autograd with create_graph=True: differentiable in input and
    in grad_output."""
    (grad_input,) = torch.autograd.grad(forward(input), input, grad_output, create_graph=True)
    return grad_input


def refuse_double_backward() -> None:
    if building_graph():
        raise RuntimeError("cnnfast: double backward (torch.autograd.grad / backward with create_graph=True) through "
                           "bn_relu / bn_relu_conv2d / bn_add_relu / the memory-efficient DenseNet and DPN blocks is "
                           "not supported; run those under `with cnnfast.backend('reference'):` for it")
