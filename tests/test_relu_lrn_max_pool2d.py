"""The fused ReLU -> LRN -> max-pool against torch.nn's three modules, cnnfast.reference and
cnnfast's own two ops, on every backend here: values, argmax, gradients, layouts, what is kept."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnfast
from cnnfast.ops.max_pool2d import offsets_to_indices
from helpers import assert_low_precision_close, backend_params, in_layout, registered_op, stepping_strides

BACKENDS = backend_params()

# (shape, size, alpha, beta, k, kernel_size, stride, padding, dilation, ceil_mode, layout). alpha is
# large enough that the normalisation changes the values by far more than the tolerances.
CASES = [
    ((2, 7, 13, 13), 5, 0.5, 0.75, 2.0, 3, 2, 0, 1, False, "contiguous"),        # AlexNet's (3/2 fast path)
    ((1, 1, 7, 8), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, False, "contiguous"),          # batch 1, one channel
    ((2, 6, 9, 10), 4, 1.0, 0.75, 1.0, 3, 2, 1, 1, True, "contiguous"),          # even size, padding, ceil_mode
    ((2, 3, 8, 7), 7, 1.5, 0.5, 1.0, 3, 2, 1, 1, False, "channels_last"),        # size > C
    ((2, 5, 9, 9), 2, 0.8, 1.3, 0.5, 2, 1, 0, 2, False, "transposed"),           # general pow, dilation
    ((2, 5, 8, 9), 5, 1.0, 0.75, 1.0, (2, 3), (1, 2), (1, 0), 1, True, "channel_slice"),  # non-square
    ((2, 4, 8, 8), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, True, "channels_last"),        # ceil_mode dropping a window
    ((1, 4, 9, 9), 3, 1.0, 0.75, 1.0, 3, 2, 1, 1, False, "ties"),                # equal LRN values in windows
    ((2, 4, 3, 3), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, False, "channels_last"),       # one output per plane
    ((2, 5, 7, 9), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, False, "channels_last_transposed"),  # channels, then W, H
    ((3, 4, 7, 8), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, False, "batch_inner"),         # dense, batch innermost
    ((2, 5, 8, 7), 3, 1.0, 0.75, 1.0, 3, 2, 1, 1, False, "channels_between"),    # dense, [N][H][C][W]
    ((2, 4, 9, 8), 3, 1.0, 0.75, 1.0, 3, 2, 0, 1, True, "transposed_slice"),     # neither dense nor NCHW
]


def case_id(case):
    shape, size, *_, kernel, stride, padding, dilation, ceil_mode, layout = case
    return f"{'x'.join(map(str, shape))}-n{size}-k{kernel}s{stride}p{padding}d{dilation}" + \
        ("-ceil" if ceil_mode else "") + f"-{layout}"


def make_input(shape, layout, dtype=torch.float32, device="cpu", seed=0):
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if layout == "ties":  # 2x2 blocks of equal columns, and many negatives: exact ties after the LRN
        blocks = torch.randint(-2, 3, (n, c, (h + 1) // 2, (w + 1) // 2), generator=generator).to(dtype)
        x = blocks.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w].contiguous()
        return x.to(device).requires_grad_()
    x = torch.randn(shape, generator=generator, dtype=dtype)
    return in_layout(x.to(device), layout).requires_grad_()


def arguments(case):
    _, size, alpha, beta, k, kernel, stride, padding, dilation, ceil_mode, _ = case
    return dict(size=size, alpha=alpha, beta=beta, k=k, kernel_size=kernel, stride=stride, padding=padding,
                dilation=dilation, ceil_mode=ceil_mode)


def torch_nn(a):
    return nn.Sequential(nn.ReLU(), nn.LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"]),
                         nn.MaxPool2d(a["kernel_size"], a["stride"], a["padding"], a["dilation"],
                                      ceil_mode=a["ceil_mode"]))


def run_with_grad(fn, x, seed=1):
    y = fn(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=y.dtype).to(y.device)
    (dx,) = torch.autograd.grad(y, x, grad)
    return y, dx


def fused(backend, a):
    def fn(x):
        with cnnfast.backend(backend):
            return cnnfast.functional.relu_lrn_max_pool2d(x, **a)
    return fn


def offsets_op(backend):
    """The op behind `backend`, which also returns the argmax offsets (None for the reference)."""
    if backend == "reference":
        return None
    ops = torch.ops.cnnfast
    return ops.relu_lrn_max_pool2d_triton if backend == "triton" else ops.relu_lrn_max_pool2d


def pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_torch_nn_and_reference(backend, device, case, dtype):
    a = arguments(case)
    x = make_input(case[0], case[-1], dtype, device)
    y, dx = run_with_grad(fused(backend, a), x)
    y_torch, dx_torch = run_with_grad(torch_nn(a), x)
    y_ref, dx_ref = run_with_grad(lambda t: cnnfast.reference.relu_lrn_max_pool2d(t, **a), x)
    assert y.dtype == dtype and dx.dtype == dtype and dx.shape == x.shape
    if dtype == torch.float64:
        for expected, grad in ((y_torch, dx_torch), (y_ref, dx_ref)):
            torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(dx, grad, rtol=1e-12, atol=1e-13)
    else:
        x64 = x.detach().double().requires_grad_()
        y_exact, dx_exact = run_with_grad(torch_nn(a), x64)
        assert_low_precision_close(y, y_torch, y_exact)
        assert_low_precision_close(dx, dx_torch, dx_exact)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    op = offsets_op(backend)
    if op is not None:
        # The argmax is torch's (ties to the first maximum): its indices from the offsets.
        kernel, stride, padding, dilation = (pair(a[key]) for key in ("kernel_size", "stride", "padding", "dilation"))
        _, offsets = op(x.detach(), a["size"], a["alpha"], a["beta"], a["k"], kernel, stride, padding, dilation,
                        a["ceil_mode"])
        lrn = F.local_response_norm(F.relu(x.detach()), a["size"], a["alpha"], a["beta"], a["k"])
        _, indices = F.max_pool2d(lrn, kernel, stride, padding, dilation, a["ceil_mode"], return_indices=True)
        assert offsets.dtype == torch.uint8
        assert torch.equal(offsets_to_indices(offsets, x.shape[-1], kernel, stride, padding, dilation), indices)
        assert y.stride() == y_torch.stride()  # torch's layout (max-pool's suggest_memory_format)
        # dx in x's own layout, as torch's elementwise ReLU backward gives it.
        assert stepping_strides(dx) == stepping_strides(dx_torch)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bit_for_bit_cnnfasts_own_two_ops(backend, device, case):
    """Where the pieces are the same math (cnnfast's LRN and max-pool on the same backend), the
    fused op's output and gradient are theirs to the bit."""
    a = arguments(case)
    lrn_args = {key: a[key] for key in ("size", "alpha", "beta", "k")}
    pool_args = {key: a[key] for key in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
    x = make_input(case[0], case[-1], device=device)
    y, dx = run_with_grad(fused(backend, a), x)
    with cnnfast.backend(backend):
        y_ops, dx_ops = run_with_grad(lambda t: cnnfast.functional.max_pool2d(
            cnnfast.functional.local_response_norm(F.relu(t), **lrn_args), **pool_args), x)
    assert torch.equal(y, y_ops)
    assert torch.equal(dx, dx_ops)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_nan_and_inf_propagate_as_in_torch(backend, device):
    a = arguments(CASES[0])
    x = make_input((1, 6, 9, 9), "contiguous", device=device).detach()
    x[0, 2, 3, 4] = float("nan")
    x[0, 4, 1, 1] = float("inf")
    x[0, 0, 6, 6] = float("-inf")
    x.requires_grad_()
    y, dx = run_with_grad(fused(backend, a), x)
    y_torch, dx_torch = run_with_grad(torch_nn(a), x)
    assert torch.equal(y.isnan(), y_torch.isnan())
    torch.testing.assert_close(y.nan_to_num(), y_torch.nan_to_num(), rtol=1e-5, atol=1e-6)
    assert torch.equal(dx.isnan(), dx_torch.isnan())
    torch.testing.assert_close(dx.nan_to_num(), dx_torch.nan_to_num(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params(reference=False))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_error_at_most_twice_torch(backend, device, dtype):
    a = arguments(CASES[0])
    x = make_input((2, 8, 9, 9), "contiguous", dtype, device)
    y, dx = run_with_grad(fused(backend, a), x)
    # torch's own ops in this dtype (the reference formula: torch.nn's avg_pool3d-based LRN does not
    # run in half precision on every device), and the exact result of the rounded input.
    y_torch, dx_torch = run_with_grad(lambda t: cnnfast.reference.relu_lrn_max_pool2d(t, **a), x)
    y_exact, dx_exact = run_with_grad(torch_nn(a), x.detach().double().requires_grad_())
    assert y.dtype == dtype and dx.dtype == dtype
    assert_low_precision_close(y, y_torch, y_exact)
    assert_low_precision_close(dx, dx_torch, dx_exact)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=["3s2", "pad-ceil-even", "dilation-pow"])
def test_gradcheck_fp64(backend, device, case):
    # Distinct values, none zero (the ReLU's kink), far apart relative to gradcheck's step so that no
    # argmax moves; small, because gradcheck runs the op twice per input element.
    shape = (1, 2, 6, 6)
    count = torch.Size(shape).numel()
    x = (torch.randperm(count, generator=torch.Generator().manual_seed(0)).double() - count / 3 + 0.5) * 0.1
    x = x.reshape(shape).to(device).requires_grad_()
    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(lambda t: cnnfast.functional.relu_lrn_max_pool2d(t, **arguments(case)), (x,))


@pytest.mark.parametrize("op_name", ["relu_lrn_max_pool2d", "relu_lrn_max_pool2d_triton"])
def test_opcheck(op_name):
    op, device = registered_op(op_name)
    for layout in ("contiguous", "channels_last", "batch_inner", "channels_between", "transposed_slice"):
        x = make_input((2, 5, 9, 10), layout, device=device)
        torch.library.opcheck(op, (x, 5, 0.5, 0.75, 2.0, [3, 3], [2, 2], [1, 1], [1, 1], True))
    x = make_input((1, 3, 8, 7), "contiguous", torch.float64, device)
    torch.library.opcheck(op, (x, 4, 1.0, 1.3, 1.0, [2, 3], [1, 2], [1, 0], [2, 1], False))


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_torch_compile_fullgraph(backend, device):
    a = dict(size=5, alpha=0.5, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=False)
    module = cnnfast.nn.ReLULRNMaxPool2d(**a)
    x = make_input((2, 7, 13, 13), "contiguous", device=device)
    with cnnfast.backend(backend):
        eager = module(x)
        compiled = torch.compile(module, fullgraph=True)(x)
        (dx,) = torch.autograd.grad(compiled.sum(), x)
        (dx_eager,) = torch.autograd.grad(eager.sum(), x)
    assert torch.equal(compiled, eager)
    assert torch.equal(dx, dx_eager)
    # ... and so as close to torch.nn's three modules as eager is.
    theirs = torch_nn(a)
    y_torch = theirs(x)
    (dx_torch,) = torch.autograd.grad(y_torch.sum(), x)
    x64 = x.detach().double().requires_grad_()
    y_exact = theirs(x64)
    (dx_exact,) = torch.autograd.grad(y_exact.sum(), x64)
    assert_low_precision_close(compiled, y_torch, y_exact)
    assert_low_precision_close(dx, dx_torch, dx_exact)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_keeps_only_its_input_and_a_byte_per_output(backend, device):
    a = arguments(CASES[0])
    x = make_input((2, 16, 27, 27), "contiguous", device=device)
    with cnnfast.backend(backend):
        y, saved = cnnfast.saved_tensor_bytes(cnnfast.functional.relu_lrn_max_pool2d, x, **a)
    _, saved_torch = cnnfast.saved_tensor_bytes(torch_nn(a), x)
    assert saved == x.numel() * x.element_size() + y.numel()
    assert 2 * saved < saved_torch


def test_module_is_the_three_torch_modules():
    ours = cnnfast.nn.ReLULRNMaxPool2d(5, alpha=1e-3, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=1,
                                       ceil_mode=True)
    # torch.nn.LocalResponseNorm's repr arguments, then torch.nn.MaxPool2d's.
    lrn = repr(nn.LocalResponseNorm(5, 1e-3, 0.75, 2.0)).removeprefix("LocalResponseNorm(")[:-1]
    pool = repr(nn.MaxPool2d(3, 2, 1, ceil_mode=True)).removeprefix("MaxPool2d(")[:-1]
    assert repr(ours) == f"ReLULRNMaxPool2d({lrn}, {pool})"
    assert ours.state_dict() == {}
    x = make_input((2, 6, 11, 11), "contiguous")
    theirs = torch_nn(dict(size=5, alpha=1e-3, beta=0.75, k=2.0, kernel_size=3, stride=2, padding=1, dilation=1,
                           ceil_mode=True))
    torch.testing.assert_close(ours(x), theirs(x))
    assert cnnfast.nn.ReLULRNMaxPool2d(3, stride=None).stride == 3


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch_gives_empty_result(backend, device):
    x = torch.randn(0, 4, 7, 7, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        y = cnnfast.functional.relu_lrn_max_pool2d(x, 3)
        y.sum().backward()
    assert y.shape == (0, 4, 3, 3) and x.grad.shape == x.shape


# Not the Triton interpreter: a window of 2^24 elements would take it minutes.
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id not in ("reference-cpu", "triton-interpreter")])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_windows_past_float_precision_keep_the_exact_argmax(backend, device, layout):
    """A window of more than 2^24 elements: an argmax offset counted in float32 would round, past
    the window's end here, and the gradient would be lost."""
    width = 2**24 + 2
    x = torch.zeros(1, 2, 1, width, device=device)
    x[..., width - 1] = 1.0  # offset 2^24 + 1, which float32 cannot hold
    x = in_layout(x, layout).requires_grad_()
    with cnnfast.backend(backend):
        out = cnnfast.functional.relu_lrn_max_pool2d(x, 1, kernel_size=(1, width), stride=1)
    (dx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert dx.count_nonzero() == 2 and dx[..., width - 1].min() > 0  # the LRN's derivative at its maximum


F_ = cnnfast.functional.relu_lrn_max_pool2d


@pytest.mark.parametrize("call,error,words", [
    (lambda: F_(torch.randn(3, 7, 7), 3), ValueError, "input must be 4-d"),
    (lambda: F_(torch.ones(1, 3, 7, 7, dtype=torch.int64), 3), TypeError, "input"),
    (lambda: F_([1.0, 2.0], 3), TypeError, "input"),
    (lambda: F_(torch.randn(1, 0, 7, 7), 3), ValueError, "input"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 0), ValueError, "size"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 2.5), TypeError, "size"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, alpha="a"), TypeError, "alpha"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, beta=None), TypeError, "beta"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, k=[1]), TypeError, "k"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, kernel_size=0), ValueError, "kernel_size"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, kernel_size=9), ValueError, "kernel_size"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, stride=0), ValueError, "stride"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, padding=2), ValueError, "padding"),
    (lambda: F_(torch.randn(1, 3, 7, 7), 3, dilation=0), ValueError, "dilation"),
    (lambda: F_(torch.randn(1, 3, 7, 1), 3, kernel_size=(1, 2), padding=(0, 1), dilation=2), ValueError,
     "holds only padding"),
])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()
