"""Local response normalisation against torch.nn and cnnfast.reference, on every backend here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnfast
from helpers import assert_low_precision_close, backend_params, in_layout, registered_op, stepping_strides

BACKENDS = backend_params()

# (shape, size, alpha, beta, k, layout). alpha is large enough that the normalisation changes
# the values by far more than the tolerances (with AlexNet's 1e-4 it is almost the identity).
CASES = [
    ((2, 7, 5, 6), 5, 0.5, 0.75, 1.0, "contiguous"),      # AlexNet's size and beta
    ((1, 1, 4, 3), 3, 1.0, 0.75, 2.0, "contiguous"),      # batch 1, one channel
    ((2, 6, 3, 5), 4, 1.0, 0.75, 1.0, "contiguous"),      # even size: asymmetric window
    ((2, 3, 4, 4), 7, 1.5, 0.5, 1.0, "contiguous"),       # size larger than C
    ((2, 9, 3, 3), 2, 0.8, 1.3, 0.5, "contiguous"),       # general pow
    ((3, 6, 11), 3, 1.0, 0.75, 1.0, "contiguous"),        # 3-d input
    ((2, 5, 3, 4, 2), 3, 1.0, 0.75, 1.0, "contiguous"),   # 5-d input
    ((2, 8, 5, 5), 5, 1.0, 0.75, 2.0, "channels_last"),
    ((2, 8, 5, 5), 3, 1.0, 0.75, 1.0, "transposed"),      # non-contiguous, read where it lies
    ((2, 8, 4, 5), 3, 1.0, 0.75, 1.0, "channels_last_transposed"),  # channels innermost, H and W swapped
    ((2, 10, 3, 4), 5, 2.0, 0.75, 1.0, "channel_slice"),  # non-contiguous view of a larger tensor
    # Any dense layout is read where it lies, and keeps its strides; anything else comes back
    # dense in its own stride order: torch's elementwise rule (the test compares strides).
    ((3, 6, 4, 5), 3, 1.0, 0.75, 1.0, "batch_inner"),
    ((3, 6, 11), 4, 1.0, 0.75, 1.0, "batch_inner"),
    ((2, 6, 4, 5), 5, 1.0, 0.75, 1.0, "channels_between"),
    ((2, 6, 4, 5), 3, 1.0, 0.75, 1.0, "transposed_slice"),
    ((2, 1, 4, 5), 3, 1.0, 0.75, 1.0, "batch_inner"),      # one channel: every element a column
    ((2, 3, 70, 3), 5, 1.0, 0.75, 1.0, "contiguous"),     # spatial size > one CPU tile of 64
    ((2, 12, 3, 3), 3, 3.0, 0.75, 0.01, "one_large"),     # a large square leaves the running sums
]
# Long windows, for the CUDA backward's rings (csrc/cuda/lrn_kernels.cuh), which the emulated CUDA
# run (test_cuda_emulation.py) checks: 33 channels' rings fit shared memory for 128 threads in fp32,
# for 32 in fp64; 101 for 32 threads in fp32 and in global memory in fp64; 199 in global memory in
# both. Not under the Triton interpreter, which runs each tap of a window as a numpy op (minutes).
LONG_WINDOW_CASES = [
    ((2, 40, 3, 3), 33, 1.0, 0.75, 1.0, "contiguous"),
    ((1, 120, 2, 3), 101, 1.0, 0.75, 1.0, "channels_last"),
    ((1, 200, 2, 2), 199, 1.0, 0.75, 1.0, "contiguous"),
]


def make_input(shape, layout, dtype=torch.float32, device="cpu", requires_grad=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    if layout == "one_large":  # small values after a large one: no rounding residue may remain
        x = torch.rand(shape, generator=generator, dtype=dtype) * 0.1
        x[:, 1] = 300.0
        return x.to(device).requires_grad_(requires_grad)
    x = torch.randn(shape, generator=generator, dtype=dtype)
    return in_layout(x.to(device), layout).requires_grad_(requires_grad)


def run_with_grad(fn, x, grad):
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    return y, dx


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-n{c[1]}-{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_forward_and_backward(backend, device, case, dtype):
    check_matches_torch(backend, device, case, dtype)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id != "triton-interpreter"])
@pytest.mark.parametrize("case", LONG_WINDOW_CASES, ids=lambda c: f"{c[0]}-n{c[1]}-{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_long_windows_match_torch(backend, device, case, dtype):
    check_matches_torch(backend, device, case, dtype)


def check_matches_torch(backend, device, case, dtype):
    shape, size, alpha, beta, k, layout = case
    x = make_input(shape, layout, dtype, device)
    grad = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device)
    with cnnfast.backend(backend):
        y, dx = run_with_grad(lambda t: cnnfast.functional.local_response_norm(t, size, alpha, beta, k), x, grad)
    y_torch, dx_torch = run_with_grad(lambda t: F.local_response_norm(t, size, alpha, beta, k), x, grad)
    y_ref, dx_ref = run_with_grad(lambda t: cnnfast.reference.local_response_norm(t, size, alpha, beta, k), x, grad)
    if dtype == torch.float64:
        for expected in (y_torch, y_ref):
            torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-13)
        for expected in (dx_torch, dx_ref):
            torch.testing.assert_close(dx, expected, rtol=1e-12, atol=1e-13)
    else:
        # fp32 against fp64 truth: dx is a difference of two terms, so where they nearly cancel any
        # two fp32 implementations differ in relative terms; the rule is torch's own error.
        x64 = x.detach().double().requires_grad_()
        y_exact, dx_exact = run_with_grad(lambda t: F.local_response_norm(t, size, alpha, beta, k), x64, grad.double())
        assert_low_precision_close(y, y_torch, y_exact)
        assert_low_precision_close(dx, dx_torch, dx_exact)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    if backend != "reference":
        # The output in torch's layout (its elementwise ops keep x's; a slice comes back dense); dx in
        # the same one (torch's pooling backward makes a channels_last one contiguous).
        assert y.stride() == y_torch.stride() and dx.stride() == y.stride()


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_torch(backend, device, dtype):
    shape, size, alpha, beta, k = (2, 12, 6, 7), 5, 1.0, 0.75, 1.0
    x64 = make_input(shape, "contiguous", torch.float64, device)
    grad64 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    x = x64.detach().to(dtype).requires_grad_()
    grad = grad64.to(dtype)
    with cnnfast.backend(backend):
        y, dx = run_with_grad(lambda t: cnnfast.functional.local_response_norm(t, size, alpha, beta, k), x, grad)
    # torch's own op in this dtype (plain torch ops: the reference formula, which torch.nn's
    # avg_pool3d-based one matches where that runs in half precision).
    y_torch, dx_torch = run_with_grad(lambda t: cnnfast.reference.local_response_norm(t, size, alpha, beta, k), x, grad)
    # Exact against the rounded input: the error measured is the op's, not the input rounding's.
    exact_y, exact_dx = run_with_grad(lambda t: F.local_response_norm(t, size, alpha, beta, k),
                                      x.detach().double().requires_grad_(), grad.double())
    assert y.dtype == dtype and dx.dtype == dtype
    assert_low_precision_close(y, y_torch, exact_y)
    assert_low_precision_close(dx, dx_torch, exact_dx)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("size,beta", [(5, 0.75), (4, 1.3), (8, 0.5)])
def test_gradcheck_fp64(backend, device, size, beta):
    # Small: gradcheck evaluates the op twice per input element (slow under the interpreter).
    x = make_input((2, 5, 2, 3), "contiguous", torch.float64, device, seed=3)
    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(
            lambda t: cnnfast.functional.local_response_norm(t, size, 0.9, beta, 1.0), (x,))


@pytest.mark.parametrize("op_name", ["local_response_norm", "local_response_norm_triton"])
def test_opcheck(op_name):
    op, device = registered_op(op_name)
    # The fake function's strides against the kernels' (opcheck compares them) in every kind of layout.
    for layout in ("contiguous", "channels_last", "batch_inner", "channels_between", "transposed_slice"):
        x = make_input((2, 6, 4, 5), layout, torch.float32, device)
        torch.library.opcheck(op, (x, 5, 0.5, 0.75, 1.0))
    torch.library.opcheck(op, (make_input((2, 4, 7), "contiguous", torch.float64, device), 3, 1.0, 0.5, 2.0))


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_torch_compile_fullgraph(backend, device):
    lrn = cnnfast.nn.LocalResponseNorm(5, alpha=0.5)
    x = make_input((2, 7, 5, 6), "contiguous", torch.float32, device)
    with cnnfast.backend(backend):
        eager = lrn(x)
        compiled = torch.compile(lrn, fullgraph=True)(x)
        (dx,) = torch.autograd.grad(compiled.sum(), x)
    torch.testing.assert_close(compiled, eager)
    (dx_torch,) = torch.autograd.grad(F.local_response_norm(x, 5, 0.5).sum(), x)
    torch.testing.assert_close(dx, dx_torch, rtol=1e-5, atol=1e-6)


def test_module_is_drop_in():
    ours, theirs = cnnfast.nn.LocalResponseNorm(3, 2e-4, 0.5, 2.0), torch.nn.LocalResponseNorm(3, 2e-4, 0.5, 2.0)
    assert repr(ours) == repr(theirs) and vars(ours) == vars(theirs)
    assert isinstance(ours, torch.nn.LocalResponseNorm)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = make_input((2, 5, 4, 4), "contiguous")
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_keeps_only_its_input_for_backward(backend, device):
    if backend == "reference":
        pytest.skip("the reference keeps what plain torch keeps")
    x = make_input((2, 8, 6, 6), "contiguous", torch.float32, device)
    with cnnfast.backend(backend):
        _, saved = cnnfast.saved_tensor_bytes(cnnfast.functional.local_response_norm, x, 5)
    _, saved_torch = cnnfast.saved_tensor_bytes(F.local_response_norm, x, 5)
    assert saved == x.numel() * x.element_size()
    assert saved_torch > 2 * saved


def _broadcast_over_batch(device):
    return torch.randn(1, 5, 4, 3, dtype=torch.float64, device=device).expand(3, 5, 4, 3)


def _broadcast_over_height(device):  # channels_last, broadcast along an inner dim
    x = torch.randn(2, 5, 1, 3, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
    return x.expand(2, 5, 4, 3)


def _size_one_dim_with_any_stride(device):  # dense; the size-1 dim's stride is not the one torch would give
    return torch.randn(4, 1, 3, 5, dtype=torch.float64, device=device).transpose(0, 1)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("make_x", [_broadcast_over_batch, _broadcast_over_height, _size_one_dim_with_any_stride],
                         ids=lambda f: f.__name__.strip("_"))
def test_broadcast_and_size_one_inputs(backend, device, make_x):
    """Values and gradients as torch's; strides empty_like's (torch's elementwise rule), which are
    torch's LRN's too, but for the strides of size-1 dims (which never step) and along a dim the
    input is broadcast over (no order there: torch's LRN follows its window sums')."""
    x = make_x(device).requires_grad_()
    grad = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4)).to(device)
    with cnnfast.backend(backend):
        y, dx = run_with_grad(lambda t: cnnfast.functional.local_response_norm(t, 3, 0.5), x, grad)
    y_torch, dx_torch = run_with_grad(lambda t: F.local_response_norm(t, 3, 0.5), x, grad)
    torch.testing.assert_close(y, y_torch, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dx, dx_torch, rtol=1e-12, atol=1e-13)
    assert y.stride() == torch.empty_like(x).stride() and dx.stride() == y.stride()
    if make_x is not _broadcast_over_height:
        assert stepping_strides(y) == stepping_strides(y_torch)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch_gives_empty_result(backend, device):
    x = torch.randn(0, 4, 3, 3, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        y = cnnfast.functional.local_response_norm(x, 3)
        y.sum().backward()
    assert y.shape == x.shape and x.grad.shape == x.shape


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
def test_a_window_far_longer_than_the_channels(backend, device):
    """size 2**31 on 5 channels: every window holds all of them, and the kernels walk at most
    2C + 1 taps, not the size (Triton's loop once ran over all 2**31: a hang; on a GPU such a size
    did not compile). torch's own LRN allocates size - 1 padding channels (out of memory): the
    formula, in fp64, is the reference. Also through the fused ReLU-LRN-max-pool."""
    size, alpha, beta, k = 2 ** 31, 2.0 ** 30, 0.75, 1.0
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).to(device)
    grad = torch.randn_like(x)

    def formula(t):
        return t / (k + alpha / size * t.square().sum(1, keepdim=True)).pow(beta)
    with cnnfast.backend(backend):
        y, dx = run_with_grad(lambda t: cnnfast.functional.local_response_norm(t, size, alpha, beta, k),
                              x.clone().requires_grad_(), grad)
    y_ref, dx_ref = run_with_grad(formula, x.clone().requires_grad_(), grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-13)
    # The fused ReLU-LRN-max-pool walks the same windows, per output lane.
    pool_grad = grad[..., :2, :2]
    with cnnfast.backend(backend):
        y, dx = run_with_grad(lambda t: cnnfast.functional.relu_lrn_max_pool2d(t, size, alpha, beta, k, 2, 1),
                              x.clone().requires_grad_(), pool_grad)
    y_ref, dx_ref = run_with_grad(lambda t: F.max_pool2d(formula(F.relu(t)), 2, 1), x.clone().requires_grad_(),
                                  pool_grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("call,error,words", [
    (lambda: cnnfast.functional.local_response_norm(torch.randn(4, 5), 3), ValueError, "input"),
    (lambda: cnnfast.functional.local_response_norm(torch.ones(2, 3, 4, dtype=torch.int64), 3), TypeError, "input"),
    (lambda: cnnfast.functional.local_response_norm([1.0, 2.0], 3), TypeError, "input"),
    (lambda: cnnfast.functional.local_response_norm(torch.randn(2, 3, 4), 0), ValueError, "size"),
    (lambda: cnnfast.functional.local_response_norm(torch.randn(2, 3, 4), -2), ValueError, "size"),
    (lambda: cnnfast.functional.local_response_norm(torch.randn(2, 3, 4), 2.5), TypeError, "size"),
    (lambda: cnnfast.functional.local_response_norm(torch.randn(2, 3, 4), 3, alpha="a"), TypeError, "alpha"),
    (lambda: cnnfast.functional.local_response_norm(torch.randn(2, 3, 4), 3, beta=None), TypeError, "beta"),
])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_numpy_hyper_parameters_are_taken_as_torch_takes_them():
    x = torch.randn(2, 6, 4, 4)
    ours = cnnfast.nn.LocalResponseNorm(np.int64(3), np.float32(1e-2), np.float64(0.75), np.float32(2.0))(x)
    torch.testing.assert_close(ours, torch.nn.LocalResponseNorm(3, 1e-2, 0.75, 2.0)(x))


def test_one_element_tensor_hyper_parameters_are_taken_as_torch_takes_them():
    x = torch.randn(2, 6, 4, 4)
    ours = cnnfast.functional.local_response_norm(x, torch.tensor(3), torch.tensor(1e-2),
                                                  torch.tensor(0.75, dtype=torch.float64), torch.tensor(2))
    torch.testing.assert_close(ours, F.local_response_norm(x, 3, 1e-2, 0.75, 2.0))
    # torch would differentiate such a tensor; cnnfast says it would not, rather than drop the gradient.
    with pytest.raises(TypeError, match="alpha is a tensor that requires grad"):
        cnnfast.functional.local_response_norm(x, 3, torch.tensor(1e-2, requires_grad=True))
