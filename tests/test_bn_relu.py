"""The BN-ReLU kernels (batch statistics, fused apply, the backward's sums and input gradient)
against cnnfast.reference and plain torch, on every backend here."""
from __future__ import annotations

import pytest
import torch

import cnnfast
from cnnfast.ops.batch_norm import acc_dtype, kernels
from helpers import backend_params, in_layout, registered_op

BACKENDS = backend_params()
KERNEL_BACKEND = {"reference": "reference", "cpu": "cpp", "cuda": "cpp", "triton": "triton"}

# (shape, layout). Spatial sizes cover one position, odd sizes, and more than one CPU block.
CASES = [
    ((2, 5, 3, 7), "contiguous"),
    ((1, 1, 4, 3), "contiguous"),        # batch 1, one channel
    ((3, 6, 1, 5), "contiguous"),        # H = 1
    ((2, 7, 5, 5), "channels_last"),
    ((2, 6, 4, 3), "channel_slice"),     # channels [2, 8) of a contiguous 11-channel buffer
    ((2, 6, 4, 3), "channels_last_slice"),  # the same slice of a channels_last buffer
    ((2, 4, 3, 5), "transposed"),        # H and W do not merge: copied into the op's layout
    ((2, 3, 48, 50), "contiguous"),      # planes longer than one CPU block of 2048
    # The CUDA kernels' walks (csrc/cuda/batch_norm_kernels.cuh bn_walk), which the emulated CUDA
    # run (test_cuda_emulation.py) checks: 11 reduction splits combined by the finalize kernel, the
    # last range shorter; and a partial tile of channels (37 channels in tiles of 32 lanes).
    ((3, 5, 41, 43), "channels_last"),
    ((2, 37, 3, 5), "channels_last"),
]


def make(shape, layout, dtype=torch.float64, device="cpu", seed=0, shift=0.0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return in_layout((x * 1.5 + shift).to(device), layout)


def per_channel(c, dtype=torch.float64, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(c, generator=g, dtype=dtype).to(device) for _ in range(4))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_kernels_match_the_reference(backend, device, case):
    shape, layout = case
    ops = kernels(KERNEL_BACKEND[backend])
    x = make(shape, layout, device=device, shift=3.0)  # an offset mean: the variance must not cancel
    grad = make(shape, "contiguous", device=device, seed=2)
    scale, shift, coef_x, coef_c = per_channel(shape[1], device=device)
    x64 = x.double()
    with cnnfast.backend(backend):
        mean, var = ops.stats(x)
        torch.testing.assert_close(mean, x64.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(var, x64.var((0, 2, 3), unbiased=False), rtol=1e-12, atol=1e-12)
        y = ops.bn_relu(x, scale, shift)
        z = x64 * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        torch.testing.assert_close(y, torch.relu(z), rtol=1e-12, atol=1e-12)
        dz = torch.where(z > 0, grad.double(), 0.0)
        sum_dz, sum_dz_xmu = ops.backward_reduce(grad, x, mean, scale, shift)
        torch.testing.assert_close(sum_dz, dz.sum((0, 2, 3)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sum_dz_xmu, (dz * (x64 - mean.view(1, -1, 1, 1))).sum((0, 2, 3)),
                                   rtol=1e-12, atol=1e-12)
        dx = ops.backward(grad, x, scale, shift, coef_x, coef_c)
        expected = dz * scale.view(1, -1, 1, 1) + x64 * coef_x.view(1, -1, 1, 1) + coef_c.view(1, -1, 1, 1)
        torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-12)
    if backend != "reference":
        layout_out = torch.channels_last if "channels_last" in layout else torch.contiguous_format
        assert y.is_contiguous(memory_format=layout_out) and dx.is_contiguous(memory_format=layout_out)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_accumulates_in_fp32_or_more(backend, device, dtype):
    x = make((2, 6, 9, 7), "contiguous", dtype=dtype, device=device, shift=2.0)
    scale, shift, _, _ = per_channel(6, torch.float32, device)
    ops = kernels(KERNEL_BACKEND[backend])
    with cnnfast.backend(backend):
        mean, var = ops.stats(x)
        y = ops.bn_relu(x, scale, shift)
    # torch's BatchNorm rule: fp64 for fp32 on CPU (C++ kernels), fp32 otherwise.
    assert mean.dtype == var.dtype == acc_dtype(x, KERNEL_BACKEND[backend]) and y.dtype == dtype
    x64 = x.double()
    # The input is exact in fp64. Accumulated in fp64: fp64 roundings only. In fp32: sums of ~100
    # values, a few fp32 ulps (1e-6 is 8 ulps at the mean's magnitude, 2).
    tol = 1e-12 if mean.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mean.double(), x64.mean((0, 2, 3)), rtol=tol, atol=tol)
    torch.testing.assert_close(var.double(), x64.var((0, 2, 3), unbiased=False), rtol=tol, atol=tol)
    exact = torch.relu(x64 * scale.double().view(1, -1, 1, 1) + shift.double().view(1, -1, 1, 1))
    # One rounding to the output dtype (plus fp32's own in the multiply-add).
    torch.testing.assert_close(y.double(), exact, rtol=torch.finfo(dtype).eps, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_propagates_as_in_torch(backend, device):
    x = make((2, 3, 4, 4), "contiguous", device=device)
    x[0, 1, 2, 2] = float("nan")
    scale, shift, _, _ = per_channel(3, device=device)
    ops = kernels(KERNEL_BACKEND[backend])
    grad = torch.ones_like(x)
    with cnnfast.backend(backend):
        y = ops.bn_relu(x, scale, shift)
        sum_dz, _ = ops.backward_reduce(grad, x, torch.zeros_like(scale), scale, shift)
        mean, _ = ops.stats(x)
    assert torch.isnan(y[0, 1, 2, 2])  # relu(NaN) is NaN
    z = x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
    # threshold_backward stops the gradient where relu's output <= 0 only: the NaN passes it.
    assert sum_dz[1] == (~(z[:, 1] <= 0)).sum() == (z[:, 1] > 0).sum() + 1
    assert torch.isnan(mean[1]) and not torch.isnan(mean[0])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_bn_relu_gradcheck_fp64(backend, device):
    x = make((2, 3, 2, 3), "contiguous", device=device).requires_grad_()
    scale, shift, _, _ = per_channel(3, device=device)
    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(cnnfast.functional.bn_relu,
                                        (x, scale.requires_grad_(), shift.requires_grad_()))


@pytest.mark.parametrize("suffix", ["", "_triton"])
def test_opcheck(suffix):
    op, device = registered_op("bn_relu" + suffix)
    for layout in ("contiguous", "channels_last", "channel_slice"):
        x = make((2, 4, 3, 5), layout, torch.float32, device)
        scale, shift, coef_x, coef_c = per_channel(4, torch.float32, device)
        grad = make((2, 4, 3, 5), "contiguous", torch.float32, device, seed=3)
        torch.library.opcheck(op, (x.requires_grad_(), scale, shift))
        ops = torch.ops.cnnfast
        torch.library.opcheck(getattr(ops, "batch_norm_stats" + suffix), (x.detach(),))
        torch.library.opcheck(getattr(ops, "_bn_relu_backward_reduce" + suffix),
                              (grad, x.detach(), coef_c, scale, shift))
        torch.library.opcheck(getattr(ops, "_bn_relu_backward" + suffix),
                              (grad, x.detach(), scale, shift, coef_x, coef_c))


@pytest.mark.parametrize("call,error,words", [
    (lambda: cnnfast.functional.bn_relu(torch.randn(2, 3, 4), torch.ones(3), torch.ones(3)), ValueError, "input"),
    (lambda: cnnfast.functional.bn_relu(torch.randn(2, 3, 4, 4), torch.ones(4), torch.ones(3)), ValueError, "scale"),
    (lambda: cnnfast.functional.bn_relu(torch.randn(2, 3, 4, 4), torch.ones(3), torch.ones(3, 1)), ValueError,
     "shift"),
    (lambda: cnnfast.functional.bn_relu(torch.ones(2, 3, 4, 4, dtype=torch.int32), torch.ones(3), torch.ones(3)),
     TypeError, "input"),
])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()
