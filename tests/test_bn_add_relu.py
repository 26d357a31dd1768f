"""BNAddReLU and bn_add_relu against torch.nn (nn.BatchNorm2d, then + identity, then ReLU) and
cnnfast.reference: outputs, every gradient and the running statistics, on every backend here."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnfast
from cnnfast.nn.residual import bn_add_relu_module
from cnnfast.ops.batch_norm import acc_dtype
from helpers import (assert_low_precision_close, assert_steps_match, backend_params, in_layout, randomise_batch_norms,
                     registered_op, training_step)

BACKENDS = backend_params()


class TorchTail(nn.Module):
    """What BNAddReLU replaces, as torchvision's blocks write it."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn

    def forward(self, input, identity=None):
        out = self.bn(input)
        return torch.relu(out if identity is None else out + identity)


def make_pair(channels=5, dtype=torch.float64, device="cpu", seed=0, **bn_kwargs):
    """Our module and torch's, with the same non-trivial parameters."""
    torch.manual_seed(seed)
    ours = cnnfast.nn.BNAddReLU(channels, **bn_kwargs)
    ours = randomise_batch_norms(ours, seed).to(device=device, dtype=dtype)
    bn = nn.BatchNorm2d(channels, **bn_kwargs).to(device=device, dtype=dtype)
    bn.load_state_dict(ours.state_dict())
    return ours, TorchTail(bn)


def assert_tail_steps_match(backend, ours, theirs, modes, make_inputs, seed):
    """helpers.assert_steps_match on (x, identity) from make_inputs, with an output gradient of x's
    shape; the output also against cnnfast.reference on the buffers each step starts from, and the
    identity's gradient (the masked output gradient) exact. Returns our outputs."""
    def make_step(generator):
        x, identity = make_inputs(generator)
        return (x, identity), torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)

    def reference(x, identity):
        return cnnfast.reference.bn_add_relu(
            x, identity, copy.deepcopy(ours.running_mean), copy.deepcopy(ours.running_var), ours.weight, ours.bias,
            ours.training or ours.running_mean is None, 0.0, ours.eps)

    def identity_grad_exact(result, their_result):
        if result[2] is not None:
            torch.testing.assert_close(result[2], their_result[2], rtol=0, atol=0)

    return assert_steps_match(backend, ours, theirs, modes, make_step, seed, reference=reference,
                              check=identity_grad_exact)


def random_inputs(shape, device, x_layout="contiguous", identity_layout="contiguous", with_identity=True):
    def make_inputs(generator):
        x = torch.randn(shape, generator=generator, dtype=torch.float64) * 2 + 0.3
        identity = torch.randn(shape, generator=generator, dtype=torch.float64) if with_identity else None
        x = in_layout(x.to(device), x_layout)
        return x, None if identity is None else in_layout(identity.to(device), identity_layout)
    return make_inputs


LAYOUTS = [("contiguous", "contiguous"), ("channels_last", "channels_last"), ("contiguous", "channels_last"),
           ("channels_last", "contiguous"), ("channel_slice", "transposed"), ("transposed", "channel_slice"),
           ("channels_last_transposed", "channels_last")]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("layouts", LAYOUTS, ids=lambda p: f"x_{p[0]}-identity_{p[1]}")
def test_training_steps_then_eval_match_torch(backend, device, layouts):
    ours, theirs = make_pair(5, device=device)
    outputs = assert_tail_steps_match(backend, ours, theirs, ("train", "train", "eval"),
                                 random_inputs((2, 5, 4, 3), device, *layouts), seed=1)
    if backend != "reference":  # x's layout as torch's BatchNorm takes it (suggest_memory_format)
        expected = torch.channels_last if layouts[0] == "channels_last" else torch.contiguous_format
        assert all(y.is_contiguous(memory_format=expected) for y in outputs)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
def test_without_identity_is_batch_norm_then_relu(backend, device, x_layout):
    ours, theirs = make_pair(4, device=device)
    assert_tail_steps_match(backend, ours, theirs, ("train", "eval", "train"),
                       random_inputs((3, 4, 5, 2), device, x_layout, with_identity=False), seed=2)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bn_kwargs", [dict(momentum=None), dict(track_running_stats=False), dict(affine=False)],
                         ids=["momentum_none", "no_running_stats", "not_affine"])
def test_batch_norm_options_as_torch(backend, device, bn_kwargs):
    ours, theirs = make_pair(3, device=device, **bn_kwargs)
    assert_tail_steps_match(backend, ours, theirs, ("train", "train", "eval", "train"),
                       random_inputs((2, 3, 3, 4), device), seed=3)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 3, 2, 3), (4, 1, 1, 2), (2, 6, 1, 1)], ids=["batch1", "one_channel", "1x1"])
def test_small_shapes(backend, device, shape):
    ours, theirs = make_pair(shape[1], device=device)
    assert_tail_steps_match(backend, ours, theirs, ("train", "eval"), random_inputs(shape, device), seed=4)


def test_one_value_per_channel_in_training_is_an_error_as_in_torch():
    ours, theirs = make_pair(3)
    x, identity = torch.randn(1, 3, 1, 1, dtype=torch.float64), torch.randn(1, 3, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as ours_error:
        ours(x, identity)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as torch_error:
        theirs(x, identity)
    assert str(ours_error.value) == str(torch_error.value)
    assert int(ours.num_batches_tracked) == int(theirs.bn.num_batches_tracked)  # counted before the error, as torch
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x, identity), theirs(x, identity))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_identity", [True, False], ids=["identity", "no_identity"])
def test_gradcheck_fp64(backend, device, training, with_identity):
    generator = torch.Generator().manual_seed(5)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    x = (randn(2, 3, 2, 3) + 0.3).requires_grad_()
    identity = randn(2, 3, 2, 3).requires_grad_() if with_identity else None
    gamma, beta = (randn(3) + 1.0).requires_grad_(), randn(3).requires_grad_()
    running_mean, running_var = randn(3), randn(3).abs() + 0.5

    def fn(x, identity, gamma, beta):
        # Copies: gradcheck calls fn many times and the running statistics must not drift.
        return cnnfast.functional.bn_add_relu(x, identity, running_mean.clone(), running_var.clone(), gamma, beta,
                                              training)

    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(fn, (x, identity, gamma, beta))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_torch(backend, device, dtype):
    ours, theirs = make_pair(6, dtype=dtype, device=device)
    exact = copy.deepcopy(theirs).double()
    generator = torch.Generator().manual_seed(6)
    shape = (2, 6, 5, 7)
    x = (torch.randn(shape, generator=generator) * 2 + 0.3).to(device=device, dtype=dtype)
    identity = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    grad = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    with cnnfast.backend(backend):
        y, dx, di = training_step(ours, x, identity, grad)
    y_torch, dx_torch, di_torch = training_step(theirs, x, identity, grad)
    y_exact, dx_exact, di_exact = training_step(exact, x.double(), identity.double(), grad.double())
    assert y.dtype == dx.dtype == di.dtype == dtype
    assert_low_precision_close(y, y_torch, y_exact)
    assert_low_precision_close(dx, dx_torch, dx_exact)
    assert_low_precision_close(di, di_torch, di_exact)
    for a, b, c in ((ours.weight, theirs.bn.weight, exact.bn.weight), (ours.bias, theirs.bn.bias, exact.bn.bias)):
        assert_low_precision_close(a.grad, b.grad, c.grad)
    for name in ("running_mean", "running_var"):
        assert_low_precision_close(getattr(ours, name), getattr(theirs.bn, name), getattr(exact.bn, name))


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("with_identity", [True, False], ids=["identity", "no_identity"])
def test_keeps_only_input_identity_and_per_channel_statistics(backend, device, with_identity):
    ours, theirs = make_pair(6, dtype=torch.float32, device=device)
    x = torch.randn(4, 6, 8, 8, device=device, requires_grad=True)
    identity = torch.randn(4, 6, 8, 8, device=device, requires_grad=True) if with_identity else None
    parameters = list(ours.parameters()) + list(theirs.parameters())
    with cnnfast.backend(backend):
        _, saved = cnnfast.saved_tensor_bytes(ours, x, identity, exclude=parameters)
    _, saved_torch = cnnfast.saved_tensor_bytes(theirs, x, identity, exclude=parameters)
    full = x.numel() * x.element_size()
    # mean and inverse std, in BatchNorm's accumulation type
    per_channel = 2 * 6 * torch.empty((), dtype=acc_dtype(x, "triton" if backend == "triton" else "cpp")).element_size()
    assert saved == full * (2 if with_identity else 1) + per_channel
    # torch keeps x and the ReLU output (the add keeps nothing).
    assert saved_torch >= 2 * full
    if not with_identity:
        assert saved < saved_torch


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_a_block_keeps_one_full_tensor_less_than_torch(backend, device):
    """In a residual block, identity is the block input, which its first convolution keeps anyway:
    the tail then adds nothing to it, while torch's keeps its ReLU output."""
    ours, theirs = make_pair(6, dtype=torch.float32, device=device)
    conv = nn.Conv2d(6, 6, 3, padding=1, bias=False).to(device)

    def block(tail, block_input):
        return tail(conv(block_input), block_input)

    x = torch.randn(4, 6, 8, 8, device=device, requires_grad=True)
    parameters = list(ours.parameters()) + list(theirs.parameters()) + list(conv.parameters())
    with cnnfast.backend(backend):
        _, saved = cnnfast.saved_tensor_bytes(block, ours, x, exclude=parameters)
    _, saved_torch = cnnfast.saved_tensor_bytes(block, theirs, x, exclude=parameters)
    full = x.numel() * x.element_size()
    per_channel = 2 * 6 * torch.empty((), dtype=acc_dtype(x, "triton" if backend == "triton" else "cpp")).element_size()
    assert saved == 2 * full + per_channel  # the block input and the conv output
    assert saved_torch >= 3 * full  # ... and the ReLU output
    assert saved_torch - saved >= full - per_channel


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("with_identity", [True, False], ids=["identity", "no_identity"])
def test_torch_compile_fullgraph(backend, device, with_identity):
    """Compiled, the op runs the same kernels as in eager, and so matches torch.nn as eager does."""
    ours, theirs = make_pair(5, dtype=torch.float32, device=device)
    exact = copy.deepcopy(theirs).double()
    compiled_module = copy.deepcopy(ours)
    x = torch.randn(2, 5, 4, 6, device=device)
    identity = torch.randn(2, 5, 4, 6, device=device) if with_identity else None
    grad = torch.randn(2, 5, 4, 6, device=device)
    with cnnfast.backend(backend):
        y, dx, di = training_step(ours, x, identity, grad)
        compiled = torch.compile(compiled_module, fullgraph=True)
        y_compiled, dx_compiled, di_compiled = training_step(compiled, x, identity, grad)
    y_torch, dx_torch, _ = training_step(theirs, x, identity, grad)
    y_exact, dx_exact, _ = training_step(exact, x.double(), None if identity is None else identity.double(),
                                         grad.double())
    torch.testing.assert_close(y_compiled, y)
    torch.testing.assert_close(dx_compiled, dx)
    if with_identity:
        torch.testing.assert_close(di_compiled, di)
    torch.testing.assert_close(compiled_module.running_var, ours.running_var)
    torch.testing.assert_close(compiled_module.num_batches_tracked, ours.num_batches_tracked)
    torch.testing.assert_close(compiled_module.weight.grad, ours.weight.grad)
    assert_low_precision_close(y_compiled, y_torch, y_exact)
    assert_low_precision_close(dx_compiled, dx_torch, dx_exact)
    torch.testing.assert_close(compiled_module.running_var, theirs.bn.running_var)


def op_inputs(device, x_layout="contiguous", identity_layout="contiguous", with_identity=True, affine=True):
    x = in_layout(torch.randn(2, 4, 3, 5, device=device), x_layout)
    identity = in_layout(torch.randn(2, 4, 3, 5, device=device), identity_layout) if with_identity else None
    mean, invstd = torch.randn(4, device=device), torch.rand(4, device=device) + 0.5
    gamma = (torch.rand(4, device=device) + 0.5).requires_grad_() if affine else None
    beta = torch.randn(4, device=device).requires_grad_() if affine else None
    return [x.requires_grad_(), None if identity is None else identity.requires_grad_(), mean, invstd, gamma, beta]


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_opcheck(backend):
    _, device = registered_op("bn_add_relu" if backend == "cpp" else "_bn_add_relu_apply_triton")
    op = torch.ops.cnnfast.bn_add_relu
    for layouts in (("contiguous", "contiguous"), ("channels_last", "contiguous"), ("channel_slice", "channels_last")):
        for training in (True, False):
            torch.library.opcheck(op, (*op_inputs(device, *layouts), training, backend))
    torch.library.opcheck(op, (*op_inputs(device, with_identity=False), True, backend))
    torch.library.opcheck(op, (*op_inputs(device, affine=False), True, backend))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck_kernels(suffix):
    _, device = registered_op("_bn_add_relu_apply" + suffix)
    ops = torch.ops.cnnfast
    for x_layout, identity_layout in (("contiguous", "channels_last"), ("channels_last", "channel_slice")):
        x, identity = in_layout(torch.randn(2, 4, 3, 5, device=device), x_layout), \
            in_layout(torch.randn(2, 4, 3, 5, device=device), identity_layout)
        grad = torch.randn(2, 4, 3, 5, device=device)
        scale, shift, coef_x, coef_c = (torch.randn(4, device=device) for _ in range(4))
        for residual in (identity, None):
            torch.library.opcheck(getattr(ops, "_bn_add_relu_apply" + suffix), (x, scale, shift, residual))
            torch.library.opcheck(getattr(ops, "_bn_add_relu_backward_reduce" + suffix),
                                  (grad, x, coef_c, scale, shift, residual))
            for residual_grad in (True, False):
                torch.library.opcheck(getattr(ops, "_bn_add_relu_backward" + suffix),
                                      (grad, x, scale, shift, coef_x, coef_c, residual, residual_grad))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_kernels_against_the_formulas(suffix):
    """The residual kernels alone, fp64, against csrc/common/batch_norm.h's formulas in torch."""
    _, device = registered_op("_bn_add_relu_apply" + suffix)
    ops = torch.ops.cnnfast
    generator = torch.Generator().manual_seed(7)
    shape = (2, 5, 4, 3)
    x, r, grad = (torch.randn(shape, generator=generator, dtype=torch.float64).to(device) for _ in range(3))
    r = r.contiguous(memory_format=torch.channels_last)
    mean, scale, shift, coef_x, coef_c = (torch.randn(5, generator=generator, dtype=torch.float64).to(device)
                                          for _ in range(5))

    def per_channel(v):
        return v.view(1, -1, 1, 1)

    z = x * per_channel(scale) + per_channel(shift) + r
    dz = torch.where(z > 0, grad, 0.0)
    torch.testing.assert_close(getattr(ops, "_bn_add_relu_apply" + suffix)(x, scale, shift, r), torch.relu(z),
                               rtol=1e-12, atol=1e-12)
    sum_dz, sum_dz_xmu = getattr(ops, "_bn_add_relu_backward_reduce" + suffix)(grad, x, mean, scale, shift, r)
    torch.testing.assert_close(sum_dz, dz.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sum_dz_xmu, (dz * (x - per_channel(mean))).sum((0, 2, 3)), rtol=1e-12, atol=1e-12)
    dx, dr = getattr(ops, "_bn_add_relu_backward" + suffix)(grad, x, scale, shift, coef_x, coef_c, r, True)
    torch.testing.assert_close(dx, dz * per_channel(scale) + x * per_channel(coef_x) + per_channel(coef_c),
                               rtol=1e-12, atol=1e-12)
    assert torch.equal(dr, dz)
    _, none = getattr(ops, "_bn_add_relu_backward" + suffix)(grad, x, scale, shift, coef_x, coef_c, r, False)
    assert none is None


def test_state_dict_of_batch_norm_loads_strictly():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.num_batches_tracked.fill_(7)
    ours = cnnfast.nn.BNAddReLU(4)
    assert isinstance(ours, nn.BatchNorm2d)
    assert list(ours.state_dict()) == list(bn.state_dict())
    ours.load_state_dict(bn.state_dict(), strict=True)
    for name, value in bn.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    # A torchvision-style block's keys ("layer1.0.bn3.weight", ...) load into a block holding BNAddReLU.
    block = nn.Module()
    block.bn3 = cnnfast.nn.BNAddReLU(4)
    source = nn.Module()
    source.bn3 = bn
    block.load_state_dict(source.state_dict(), strict=True)
    ours.eval()
    bn.eval()
    x, identity = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(ours(x, identity), torch.relu(bn(x) + identity))


def test_from_batch_norm_shares_parameters_and_buffers():
    bn = nn.BatchNorm2d(3, momentum=None, eps=1e-3)
    ours = cnnfast.nn.BNAddReLU.from_batch_norm(bn)
    assert ours.weight is bn.weight and ours.bias is bn.bias
    assert ours.running_mean is bn.running_mean and ours.num_batches_tracked is bn.num_batches_tracked
    assert ours.eps == 1e-3 and ours.momentum is None and ours.training
    assert list(ours.state_dict()) == list(bn.state_dict())
    reference_bn = copy.deepcopy(bn)
    x, identity = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ours(x, identity), torch.relu(reference_bn(x) + identity))
    torch.testing.assert_close(bn.running_var, reference_bn.running_var)  # updated in the shared buffers
    assert int(bn.num_batches_tracked) == 1
    not_affine = cnnfast.nn.BNAddReLU.from_batch_norm(nn.BatchNorm2d(3, affine=False, track_running_stats=False))
    assert not_affine.weight is None and not_affine.running_mean is None
    with pytest.raises(TypeError, match="bn must be an nn.BatchNorm2d"):
        cnnfast.nn.BNAddReLU.from_batch_norm(nn.BatchNorm1d(3))


def test_module_function_runs_any_batch_norm():
    bn = nn.BatchNorm2d(3)
    reference_bn = copy.deepcopy(bn)
    x, identity = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn_add_relu_module(bn, x, identity), torch.relu(reference_bn(x) + identity))
    torch.testing.assert_close(bn_add_relu_module(bn, x), torch.relu(reference_bn(x)))
    torch.testing.assert_close(bn.running_mean, reference_bn.running_mean)
    assert int(bn.num_batches_tracked) == 2


def test_statistics_shared_across_ranks_run_the_sync_batch_norm_itself(monkeypatch):
    # The op has no all-reduce: a SyncBatchNorm synchronising in training runs its own forward,
    # then + identity and ReLU. torch's SyncBatchNorm runs on GPUs only, so here its forward is
    # BatchNorm2d's (the statistics of a one-rank group) and the routing is what is checked.
    from cnnfast.nn import residual
    calls = []

    def forward(self, input):
        calls.append(input.shape)
        return nn.BatchNorm2d.forward(self, input)

    monkeypatch.setattr(residual.sync_batch_norm, "group_name", lambda group: "" if group is None else "two_ranks")
    monkeypatch.setattr(nn.SyncBatchNorm, "forward", forward)
    bn = nn.SyncBatchNorm(3, process_group=object())
    reference_bn = nn.BatchNorm2d(3)
    x, identity = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(bn_add_relu_module(bn, x, identity), torch.relu(reference_bn(x) + identity))
    assert calls == [x.shape] and int(bn.num_batches_tracked) == 1


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_double_backward_is_refused_not_silently_wrong(backend, device):
    ours, _ = make_pair(3, device=device)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    identity = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device)
    with cnnfast.backend(backend):
        loss = ours(x, identity).square().sum()
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_only_identity_needs_a_gradient(backend, device):
    ours, theirs = make_pair(3, device=device)
    for m in (ours, theirs):
        m.requires_grad_(False)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device)
    identity = torch.randn(2, 3, 4, 4, dtype=torch.float64, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        (grad,) = torch.autograd.grad(ours(x, identity).sum(), identity)
    (grad_ref,) = torch.autograd.grad(theirs(x, identity).sum(), identity)
    assert torch.equal(grad, grad_ref)


F_ARGS = dict(running_mean=torch.zeros(3), running_var=torch.ones(3), weight=torch.ones(3), bias=torch.zeros(3))


def call(**changes):
    args = {"input": torch.randn(2, 3, 4, 4), "identity": torch.randn(2, 3, 4, 4), **F_ARGS, **changes}
    return lambda: cnnfast.functional.bn_add_relu(**args)


@pytest.mark.parametrize("fn,error,words", [
    (call(input=torch.randn(3, 4, 4)), ValueError, "input must be 4-d"),
    (call(input=torch.ones(2, 3, 4, 4, dtype=torch.int64)), TypeError, "input"),
    (call(identity=torch.randn(2, 3, 4, 5)), ValueError, "identity must have input's shape"),
    (call(identity=torch.randn(2, 3, 4, 4, dtype=torch.float64)), TypeError, "identity must have input's dtype"),
    (call(identity=torch.randn(2, 3, 4, 4, device="meta")), ValueError, "identity must be on input's device"),
    (call(identity=[1.0]), TypeError, "identity must be a torch.Tensor"),
    (call(running_mean=torch.zeros(4)), ValueError, "running_mean"),
    (call(weight=torch.ones(2)), ValueError, "weight"),
    (call(bias=torch.ones(3, 1)), ValueError, "bias"),
    (call(running_mean=None), ValueError, "running_mean"),
    (call(running_var=None, training=True), ValueError, "both be None"),
    (call(momentum="fast"), TypeError, "momentum"),
    (call(weight=torch.ones(3, dtype=torch.float64)), TypeError, "weight must be torch.float32"),
    (call(input=torch.randn(2, 3, 4, 4, dtype=torch.float64), identity=None), TypeError, "running_mean"),
    (call(running_mean=torch.zeros(1).expand(3), training=True), ValueError, "running_mean is updated in training"),
    # as F.batch_norm: eps positive in training, non-negative in evaluation; no channels with a weight
    (call(eps=0.0, training=True), ValueError, "eps must be positive during training, but got 0.0"),
    (call(eps=-1e-5), ValueError, "eps must be non-negative, but got -1e-05"),
    (call(input=torch.randn(2, 0, 4, 4), identity=None, running_mean=torch.zeros(0), running_var=torch.ones(0),
          weight=torch.ones(0), bias=torch.zeros(0), training=True), ValueError, "input has no channels"),
])
def test_bad_input_names_the_argument(fn, error, words):
    with pytest.raises(error, match=words):
        fn()


def test_bad_input_leaves_the_state_alone():
    ours = cnnfast.nn.BNAddReLU(3)
    with pytest.raises(ValueError, match="4-d"):
        ours(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="identity"):
        ours(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 1))
    assert int(ours.num_batches_tracked) == 0


def test_functional_matches_torch_functional():
    x, identity = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    ours_stats, theirs_stats = [(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
                                for _ in range(2)]
    y = cnnfast.functional.bn_add_relu(x, identity, *ours_stats, None, None, True, 0.3, 1e-3)
    y_ref = F.relu(F.batch_norm(x, *theirs_stats, None, None, True, 0.3, 1e-3) + identity)
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(ours_stats, theirs_stats):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch(backend, device):
    ours, theirs = make_pair(3, dtype=torch.float32, device=device)
    x, identity = torch.randn(0, 3, 4, 4, device=device), torch.randn(0, 3, 4, 4, device=device)
    grad = torch.randn(0, 3, 4, 4, device=device)
    with cnnfast.backend(backend):
        y, dx, di = training_step(ours, x, identity, grad)
    y_ref, dx_ref, di_ref = training_step(theirs, x, identity, grad)
    assert y.shape == y_ref.shape and dx.shape == dx_ref.shape and di.shape == di_ref.shape
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs.bn, name))
    for a, b in ((ours.weight, theirs.bn.weight), (ours.bias, theirs.bn.bias)):
        torch.testing.assert_close(a.grad, b.grad)  # zeros, not NaN


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_no_channels_without_a_weight_gives_torchs_empty_results(backend, device, training):
    """torch's BatchNorm without a weight (affine=False) takes an input of no channels: so do
    bn_add_relu and bn_relu_conv2d, forward and backward."""
    x = torch.randn(2, 0, 5, 5, device=device, requires_grad=True)
    conv = torch.randn(4, 0, 3, 3, device=device, requires_grad=True)
    stats = (torch.zeros(0, device=device), torch.ones(0, device=device))
    with cnnfast.backend(backend):
        y = cnnfast.functional.bn_add_relu(x, None, *stats, None, None, training)
        z = cnnfast.functional.bn_relu_conv2d(x, *stats, None, None, conv, padding=1, training=training)
    grads = torch.autograd.grad(y.sum() + z.sum(), (x, conv))
    y_ref = F.relu(F.batch_norm(x, *stats, None, None, training))
    z_ref = F.conv2d(F.relu(F.batch_norm(x, *stats, None, None, training)), conv, padding=1)
    grads_ref = torch.autograd.grad(y_ref.sum() + z_ref.sum(), (x, conv))
    for ours, theirs in zip((y, z, *grads), (y_ref, z_ref, *grads_ref)):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
def test_the_op_itself_takes_an_input_of_no_channels(backend, device):
    """torch.ops.cnnfast.bn_add_relu called directly (the public function refuses it, as torch does):
    empty results and gradients, where the backward's count of values per channel once divided by
    zero channels and killed the process (SIGFPE)."""
    x = torch.randn(2, 0, 4, 4, device=device, requires_grad=True)
    weight = torch.ones(0, device=device, requires_grad=True)
    out = torch.ops.cnnfast.bn_add_relu(x, None, torch.zeros(0, device=device), torch.ones(0, device=device),
                                         weight, torch.zeros(0, device=device), True,
                                         "triton" if backend == "triton" else "cpp")
    grad_x, grad_weight = torch.autograd.grad(out.sum(), (x, weight))
    assert out.shape == x.shape and grad_x.shape == x.shape and grad_weight.shape == (0,)
