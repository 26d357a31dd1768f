"""Every op under torch.compile(fullgraph=True) with a dynamic batch, and with a batch known only at
run time (cut by a tensor's value: an unbacked size). The fake functions must not guard on the
latter, and must give the layout the kernels return: inductor checks the strides it was promised
against the real ones.

Whole models are not tested so: torch's own fake convolution (in aten) gives up on the layout for
such a size on CPU and fails the same check, with or without cnnfast."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnfast
import cnnfast.functional as cf
from cnnfast import reference
from cnnfast.ops.avg_pool2d import avg_pool2d
from helpers import backend_params

C = 4


_GENERATOR = torch.Generator().manual_seed(0)
_BATCH_NORM = (torch.randn(C, generator=_GENERATOR) * 0.1, torch.rand(C, generator=_GENERATOR) + 0.5,
               torch.rand(C, generator=_GENERATOR) + 0.5, torch.randn(C, generator=_GENERATOR))
_CONV_WEIGHT = torch.randn(6, C, 3, 3, generator=_GENERATOR) * 0.2


def _batch_norm_arguments(x):
    """running_mean, running_var (fresh copies: training updates them), weight, bias; on x's device."""
    return [v.to(x.device, copy=True) for v in _BATCH_NORM]


def _conv_weight(x):
    return _CONV_WEIGHT.to(x.device)


def _scale_and_shift(x):
    return _BATCH_NORM[2].to(x.device), _BATCH_NORM[3].to(x.device)


# op -> (cnnfast's call, the reference's: torch.nn.functional or cnnfast.reference); each takes the input.
OPS = {
    "local_response_norm": (lambda x: cf.local_response_norm(x, 3, 0.5), lambda x: F.local_response_norm(x, 3, 0.5)),
    "max_pool2d": (lambda x: cf.max_pool2d(x, 3, 2), lambda x: F.max_pool2d(x, 3, 2)),
    "max_pool2d_with_indices": (lambda x: cf.max_pool2d(x, 3, 2, return_indices=True)[1],
                                lambda x: F.max_pool2d(x, 3, 2, return_indices=True)[1]),
    "avg_pool2d": (lambda x: avg_pool2d(x, 3, 2), lambda x: F.avg_pool2d(x, 3, 2)),
    "relu_lrn_max_pool2d": (lambda x: cf.relu_lrn_max_pool2d(x, 3, 0.5),
                            lambda x: reference.relu_lrn_max_pool2d(x, 3, 0.5)),
    "bn_relu": (lambda x: cf.bn_relu(x, *_scale_and_shift(x)), lambda x: reference.bn_relu(x, *_scale_and_shift(x))),
    **{f"bn_add_relu_{mode}": (
        lambda x, training=training: cf.bn_add_relu(x, x, *_batch_norm_arguments(x), training),
        lambda x, training=training: reference.bn_add_relu(x, x, *_batch_norm_arguments(x), training))
       for mode, training in (("eval", False), ("train", True))},
    **{f"bn_relu_conv2d_{mode}": (
        lambda x, training=training: cf.bn_relu_conv2d(x, *_batch_norm_arguments(x), _conv_weight(x), padding=1,
                                                       training=training),
        lambda x, training=training: reference.bn_relu_conv2d(x, *_batch_norm_arguments(x), _conv_weight(x),
                                                              padding=1, training=training))
       for mode, training in (("eval", False), ("train", True))},
}


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("op", list(OPS))
def test_a_batch_known_only_at_run_time(backend, device, op, layout, monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "capture_scalar_outputs", True)
    ours, theirs = OPS[op]
    fewest = 2 if op.endswith("_train") else 1  # training BatchNorm needs more than one value per channel

    def first(count, x):
        n = count.item()
        torch._check(n >= fewest)  # a batch of 1 possible: nothing may be decided on N > 1
        torch._check(n <= x.shape[0])
        return ours(x[:n])

    x = torch.randn(4, C, 9, 9, generator=torch.Generator().manual_seed(2)).to(device, memory_format=layout)
    x.requires_grad_()
    torch._dynamo.reset()
    compiled_first = torch.compile(first, fullgraph=True)
    for n in (3, fewest):  # a batch of 1 may recompile: torch's own fake functions guard on it
        with cnnfast.backend(backend):
            compiled = compiled_first(torch.tensor(n, device=device), x)
        _assert_matches(compiled, theirs(x[:n]), x)


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("op", list(OPS))
def test_a_dynamic_batch(backend, device, op, layout, monkeypatch):
    """One graph for every batch size (dynamic=True): 5, then 7 and 2 through the same code, a
    recompilation being an error (no batch equal to another size, which torch's duck sizing would
    tie to it)."""
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    ours, theirs = OPS[op]
    torch._dynamo.reset()
    compiled_op = torch.compile(ours, fullgraph=True, dynamic=True)
    for n in (5, 7, 2):
        x = torch.randn(n, C, 9, 9, generator=torch.Generator().manual_seed(n)).to(device, memory_format=layout)
        x.requires_grad_()
        with cnnfast.backend(backend):
            compiled = compiled_op(x)
        _assert_matches(compiled, theirs(x), x)


def _assert_matches(compiled, expected, x):
    """Values, strides and (for a floating-point result) the input's gradient, as torch's."""
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)
    assert compiled.stride() == expected.stride()
    if compiled.is_floating_point():
        (grad,) = torch.autograd.grad(compiled.sum(), x)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
def test_lrn_of_a_view_whose_width_is_known_only_at_run_time(backend, device, monkeypatch):
    """LRN of x.transpose(2, 3)[:, :, :n], n known only at run time: a view that is dense when n is
    the full width (read where it lies, its strides kept) and not otherwise (copied). Both give
    empty_like's strides, which the fake function promises without knowing which case it is."""
    monkeypatch.setattr(torch._dynamo.config, "capture_scalar_outputs", True)
    ours, theirs = OPS["local_response_norm"]

    def first_columns(count, x):
        n = count.item()
        torch._check(n >= 1)
        torch._check(n <= x.shape[3])
        return ours(x.transpose(2, 3)[:, :, :n])

    x = torch.randn(2, C, 6, 9, generator=torch.Generator().manual_seed(3)).to(device).requires_grad_()
    torch._dynamo.reset()
    compiled_first_columns = torch.compile(first_columns, fullgraph=True)
    for n in (9, 4):
        with cnnfast.backend(backend):
            compiled = compiled_first_columns(torch.tensor(n, device=device), x)
        _assert_matches(compiled, theirs(x.transpose(2, 3)[:, :, :n]), x)
