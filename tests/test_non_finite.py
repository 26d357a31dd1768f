"""Non-finite inputs (NaN, +-inf) through the BatchNorm ops and LRN: the outputs and gradients
torch's own composition gives, NaN where torch has NaN and finite where it is finite (torch's
ReLU backward passes the gradient where its output is NaN; its eval BatchNorm backward has no
term in x, so an infinite x still gets a finite gradient)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cnnfast
from helpers import backend_params

BACKENDS = backend_params()


def _input(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    flat = x.view(-1)
    flat[1], flat[3], flat[6] = float("nan"), float("inf"), float("-inf")
    return x


def _grads(fn, tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    grad = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return [out.detach(), *torch.autograd.grad(out, tensors, grad, allow_unused=True)]


def _assert_same(ours, theirs):
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)


def _batch_norm_parameters(channels):
    generator = torch.Generator().manual_seed(1)
    weight = torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5
    bias = torch.rand(channels, generator=generator, dtype=torch.float64) - 0.5
    mean = torch.randn(channels, generator=generator, dtype=torch.float64)
    var = torch.rand(channels, generator=generator, dtype=torch.float64) + 0.5
    return weight, bias, mean, var


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("with_identity", [True, False], ids=["identity", "no_identity"])
def test_bn_add_relu(backend, device, training, with_identity):
    x = _input((2, 3, 3, 4)).to(device)
    identity = torch.randn(2, 3, 3, 4, dtype=torch.float64, device=device) if with_identity else None
    weight, bias, mean, var = (t.to(device) for t in _batch_norm_parameters(3))

    def ours(x, weight, bias):
        with cnnfast.backend(backend):
            return cnnfast.functional.bn_add_relu(x, identity, mean.clone(), var.clone(), weight, bias, training)

    def theirs(x, weight, bias):
        out = F.batch_norm(x, mean.clone(), var.clone(), weight, bias, training)
        return F.relu(out if identity is None else out + identity)

    _assert_same(_grads(ours, (x, weight, bias)), _grads(theirs, (x, weight, bias)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_bn_relu_conv2d(backend, device, training):
    x = _input((2, 3, 4, 4)).to(device)
    weight, bias, mean, var = (t.to(device) for t in _batch_norm_parameters(3))
    conv = torch.randn(2, 3, 1, 1, dtype=torch.float64, device=device)

    def ours(x, weight, bias):
        with cnnfast.backend(backend):
            return cnnfast.functional.bn_relu_conv2d(x, mean.clone(), var.clone(), weight, bias, conv,
                                                     training=training)

    def theirs(x, weight, bias):
        return F.conv2d(F.relu(F.batch_norm(x, mean.clone(), var.clone(), weight, bias, training)), conv)

    _assert_same(_grads(ours, (x, weight, bias)), _grads(theirs, (x, weight, bias)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.75, 1.3])
def test_lrn_forward(backend, device, beta):
    # pow(s, 0) is 1 whatever s is: an infinite window still divides by 1 when beta is 0.
    x = torch.tensor([1.0, float("inf"), 2.0, -3.0], dtype=torch.float64, device=device).view(1, 4, 1, 1)
    with cnnfast.backend(backend):
        ours = cnnfast.functional.local_response_norm(x, 3, alpha=0.5, beta=beta, k=1.0)
    torch.testing.assert_close(ours, F.local_response_norm(x, 3, alpha=0.5, beta=beta, k=1.0), equal_nan=True)


def _zero_windows_and_an_infinity():
    # Channels 0-2 zero (with k=0 their windows' scale is 0: t = dy x s^(-beta-1) is NaN there),
    # one infinite value in another column.
    x = torch.randn(1, 6, 3, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[:, :3] = 0
    x[0, 4, 2, 1] = float("inf")
    return x


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.75])
@pytest.mark.parametrize("k", [0.0, 1.0])
def test_lrn_backward_where_scales_are_zero_or_infinite(backend, device, beta, k):
    """beta = 0 makes LRN the identity: torch's gradient is then the output's (its pow backward
    gives 0 for an exponent of 0) whatever the windows hold, NaN only at a non-finite x."""
    x = _zero_windows_and_an_infinity().to(device)

    def ours(t):
        with cnnfast.backend(backend):
            return cnnfast.functional.local_response_norm(t, 3, alpha=0.5, beta=beta, k=k)
    _assert_same(_grads(ours, (x,)), _grads(lambda t: F.local_response_norm(t, 3, 0.5, beta, k), (x,)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("beta", [0.0, 0.75])
@pytest.mark.parametrize("alpha", [0.5, 0.0])
def test_relu_lrn_max_pool_backward_where_scales_are_zero(backend, device, beta, alpha):
    """With alpha = 0 and k = 0 every scale is 0, positive x included (with alpha > 0 the ReLU
    masks every x whose window is all zeros)."""
    x = _zero_windows_and_an_infinity().to(device)

    def ours(t):
        with cnnfast.backend(backend):
            return cnnfast.functional.relu_lrn_max_pool2d(t, 3, alpha=alpha, beta=beta, k=0.0, kernel_size=2,
                                                          stride=1)

    def theirs(t):
        return F.max_pool2d(F.local_response_norm(F.relu(t), 3, alpha, beta, 0.0), 2, 1)
    _assert_same(_grads(ours, (x,)), _grads(theirs, (x,)))


def _with_non_finite(case, shape, layout):
    """x with, in channel 1 only, the values `case` names, at places spread over the batch and
    the image so that they land in different blocks, tiles and chunks of every kernel."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    n, _, h, w = shape
    places = [(0, 0, 0), (n - 1, h - 1, w - 1), (n // 2, h // 2, w // 3)]
    values = {"inf": ["inf"], "-inf": ["-inf"], "nan": ["nan"], "inf_and_-inf": ["inf", "-inf"]}[case]
    for (b, i, j), value in zip(places, values * len(places)):
        x[b, 1, i, j] = float(value)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", ["inf", "-inf", "nan", "inf_and_-inf"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (3, 3, 41, 37)], ids=["small", "several_blocks"])
def test_running_statistics_after_a_batch_with_non_finite_values(backend, device, case, layout, shape):
    """torch's running_mean takes the batch mean, sum / count: +-inf after a batch holding +inf or
    -inf (NaN for both, or for a NaN); its running_var is NaN. The other channels are unaffected."""
    x = _with_non_finite(case, shape, layout).to(device)
    weight, bias, mean, var = (t.to(device) for t in _batch_norm_parameters(3))
    ours_mean, ours_var = mean.clone(), var.clone()
    with cnnfast.backend(backend):
        out = cnnfast.functional.bn_add_relu(x, None, ours_mean, ours_var, weight, bias, True)
    theirs_mean, theirs_var = mean.clone(), var.clone()
    expected = F.relu(F.batch_norm(x, theirs_mean, theirs_var, weight, bias, True))
    _assert_same([out, ours_mean, ours_var], [expected, theirs_mean, theirs_var])
    assert ours_mean[0].isfinite() and ours_mean[2].isfinite()


def _an_overflowing_square():
    # 1e200 squared overflows fp64: its windows' scale is inf, its output and theirs 0 or -0.
    x = torch.randn(2, 7, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[0, 3, 1, 1] = 1e200
    x[1, 0, 2, 0] = -1e200
    return x


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("beta", [0.5, 0.75, 1.0, 1.3, 2.0])
def test_lrn_backward_where_a_window_overflows(backend, device, beta):
    """torch's gradient is 0 through an infinite scale for beta <= 1 and NaN for beta > 1 (its pow
    backward multiplies a zero gradient by s^(beta-1) = inf): over the reverse windows of every
    channel whose window holds the overflowing square."""
    x = _an_overflowing_square().to(device)

    def ours(t):
        with cnnfast.backend(backend):
            return cnnfast.functional.local_response_norm(t, 3, alpha=0.5, beta=beta, k=1.0)
    _assert_same(_grads(ours, (x,)), _grads(lambda t: F.local_response_norm(t, 3, 0.5, beta, 1.0), (x,)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype,beta,value", [
    (torch.float64, 4.0, 1e52),   # s about 1e104, finite: s^3 overflows, so torch's dx is NaN there
    (torch.float32, 3.0, 1e10),   # s about 1e20 in fp32: s^2 overflows
    (torch.float64, 1.5, 1e152),  # s^0.5 stays finite: finite, as torch's
    (torch.float32, 1.5, 1e10),
], ids=["fp64-beta4", "fp32-beta3", "fp64-beta1.5", "fp32-beta1.5"])
def test_lrn_backward_where_s_to_the_beta_minus_one_overflows(backend, device, dtype, beta, value):
    """torch's LRN gradient is NaN wherever its pow backward's s^(beta-1) overflows the input's
    dtype, not only where s itself is infinite."""
    x = torch.randn(1, 5, 2, 2, generator=torch.Generator().manual_seed(7), dtype=dtype)
    x[0, 2, 1, 0] = value
    x = x.to(device)

    def ours(t):
        with cnnfast.backend(backend):
            return cnnfast.functional.local_response_norm(t, 3, alpha=0.5, beta=beta, k=1.0)
    ours_out, ours_dx = _grads(ours, (x,))
    torch_out, torch_dx = _grads(lambda t: F.local_response_norm(t, 3, 0.5, beta, 1.0), (x,))
    torch.testing.assert_close(ours_out, torch_out, equal_nan=True)
    torch.testing.assert_close(ours_dx, torch_dx, equal_nan=True)
    assert ours_dx.isnan().any() == (beta > 2)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("beta", [0.75, 1.3])
def test_relu_lrn_max_pool_backward_where_a_window_overflows(backend, device, beta):
    x = _an_overflowing_square().to(device)

    def ours(t):
        with cnnfast.backend(backend):
            return cnnfast.functional.relu_lrn_max_pool2d(t, 3, alpha=0.5, beta=beta, k=1.0, kernel_size=2,
                                                          stride=1)

    def theirs(t):
        return F.max_pool2d(F.local_response_norm(F.relu(t), 3, 0.5, beta, 1.0), 2, 1)
    _assert_same(_grads(ours, (x,)), _grads(theirs, (x,)))
