"""Beyond first-order reverse mode: double backward (create_graph=True, as gradient penalties use
it), forward-mode AD and torch.func transforms, against torch's own ops. The pooling and LRN ops
give torch's numbers; the BatchNorm ops refuse double backward with a clear error (never a gradient
whose derivatives are silently zero) and run forward-mode AD through plain torch ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad

import cnnfast
from cnnfast.ops.avg_pool2d import avg_pool2d

from helpers import backend_params

# Each pair: (cnnfast's function, torch's function) of one 4-d tensor.
POOL_AND_LRN = {
    "max_pool2d": (lambda x: cnnfast.functional.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1)),
    "max_pool2d-channels_last-ceil": (
        lambda x: cnnfast.functional.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2, 2, 0, 1, True),
        lambda x: F.max_pool2d(x, 2, 2, 0, 1, True)),
    "local_response_norm": (lambda x: cnnfast.functional.local_response_norm(x, 3, 1e-2, 0.75, 2.0),
                            lambda x: F.local_response_norm(x, 3, 1e-2, 0.75, 2.0)),
    "relu_lrn_max_pool2d": (
        lambda x: cnnfast.functional.relu_lrn_max_pool2d(x, 3, 1e-2, 0.75, 2.0, 3, 2),
        lambda x: F.max_pool2d(F.local_response_norm(F.relu(x), 3, 1e-2, 0.75, 2.0), 3, 2)),
}


def gradient_penalty(fn, x):
    """(first-order gradient, gradient of its squared norm): a WGAN-GP / R1 style double backward."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
    (grad_of_penalty,) = torch.autograd.grad(grad.square().sum(), x)
    return grad.detach(), grad_of_penalty


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name", POOL_AND_LRN)
def test_double_backward_matches_torch(name, backend, device):
    ours, theirs = POOL_AND_LRN[name]
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64, device=device)
    with cnnfast.backend(backend):
        grad, second = gradient_penalty(ours, x)
    grad_ref, second_ref = gradient_penalty(theirs, x)
    assert second_ref.abs().sum() > 0  # the check has something to find
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, second_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(not cnnfast.extension_loaded(), reason="cnnfast._C not built")
@pytest.mark.parametrize("name", POOL_AND_LRN)
def test_gradgradcheck(name):
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(POOL_AND_LRN[name][0], (x,))


def bn_relu_conv(x, weight):
    return cnnfast.functional.bn_relu_conv2d(x, None, None, None, None, weight, training=True)


def bn_relu_conv_torch(x, weight):
    return F.conv2d(F.relu(F.batch_norm(x, None, None, training=True)), weight)


def bn_add_relu(x, identity):
    return cnnfast.functional.bn_add_relu(x, identity, None, None, training=True)


def bn_add_relu_torch(x, identity):
    return F.relu(F.batch_norm(x, None, None, training=True) + identity)


BATCH_NORM_OPS = {"bn_relu_conv2d": (bn_relu_conv, bn_relu_conv_torch, (5, 4, 3, 3)),
                  "bn_add_relu": (bn_add_relu, bn_add_relu_torch, (2, 4, 6, 6))}


@pytest.mark.skipif(not cnnfast.extension_loaded(), reason="cnnfast._C not built")
@pytest.mark.parametrize("name", BATCH_NORM_OPS)
@pytest.mark.parametrize("grad_output_requires_grad", [True, False], ids=["penalty", "constant_grad_output"])
def test_batch_norm_ops_refuse_double_backward(name, grad_output_requires_grad):
    # A constant grad_output (the op last in the model, or what follows it frozen) would otherwise
    # give a first-order gradient without a graph: a penalty on it silently contributes nothing.
    ours, _, other_shape = BATCH_NORM_OPS[name]
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    other = torch.randn(other_shape, dtype=torch.float64)
    out = ours(x, other)
    if grad_output_requires_grad:
        out = out.square()
    with pytest.raises(RuntimeError, match="create_graph=True.*cnnfast.backend\\('reference'\\)"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


@pytest.mark.parametrize("name", BATCH_NORM_OPS)
def test_batch_norm_ops_double_backward_on_the_reference_backend(name):
    ours, theirs, other_shape = BATCH_NORM_OPS[name]
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    other = torch.randn(other_shape, dtype=torch.float64)
    with cnnfast.backend("reference"):
        grad, second = gradient_penalty(lambda t: ours(t, other), x)
    grad_ref, second_ref = gradient_penalty(lambda t: theirs(t, other), x)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(second, second_ref, rtol=1e-10, atol=1e-12)


ALL_OPS = {**POOL_AND_LRN, **{name: (lambda x, f=ours, s=shape: f(x, torch.ones(s, dtype=x.dtype)),
                                     lambda x, f=theirs, s=shape: f(x, torch.ones(s, dtype=x.dtype)))
                              for name, (ours, theirs, shape) in BATCH_NORM_OPS.items()},
           # The average pool of DenseNet's transitions (cnnfast.nn.Transition, convert's FusedSequential).
           "avg_pool2d": (lambda x: avg_pool2d(x, 2, 2), lambda x: F.avg_pool2d(x, 2, 2))}


@pytest.mark.parametrize("name", ALL_OPS)
def test_forward_mode_ad_matches_torch(name):
    ours, theirs = ALL_OPS[name]
    x, tangent = torch.randn(2, 4, 6, 6, dtype=torch.float64), torch.randn(2, 4, 6, 6, dtype=torch.float64)
    results = []
    for fn in (ours, theirs):
        with forward_ad.dual_level():
            out = forward_ad.unpack_dual(fn(forward_ad.make_dual(x, tangent)))
        assert out.tangent is not None
        results.append(out)
    torch.testing.assert_close(results[0].primal, results[1].primal, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results[0].tangent, results[1].tangent, rtol=1e-10, atol=1e-12)
    _, jvp = torch.func.jvp(ours, (x,), (tangent,))
    torch.testing.assert_close(jvp, results[1].tangent, rtol=1e-10, atol=1e-12)


# vmap has no channels_last (Tensor.contiguous(memory_format) is not batched).
@pytest.mark.parametrize("name", [name for name in ALL_OPS if "channels_last" not in name])
def test_torch_func_grad_and_vmap_match_torch(name):
    ours, theirs = ALL_OPS[name]
    x = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64)
    grads = [torch.func.vmap(torch.func.grad(lambda t, f=fn: f(t).square().sum()))(x) for fn in (ours, theirs)]
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)
