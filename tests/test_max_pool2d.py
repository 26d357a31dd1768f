"""Max pooling against torch.nn.functional.max_pool2d, on every backend here: values, torch's
int64 indices, and gradients bit for bit (ties, NaN, -inf and padding included)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cnnfast
from helpers import assert_low_precision_close, backend_params, in_layout, registered_op, stepping_strides

BACKENDS = backend_params()

# (shape, kernel_size, stride, padding, dilation, ceil_mode)
GEOMETRIES = [
    ((2, 3, 13, 13), 3, 2, 0, 1, False),              # AlexNet's overlapping 3/2 (fast path)
    ((1, 1, 7, 8), 3, 2, 0, 1, False),                # batch 1, one channel, odd/even sizes
    ((2, 3, 9, 10), 3, 2, 1, 1, False),               # padding: windows hit the border
    ((2, 3, 9, 10), 3, 2, 1, 1, True),                # ceil_mode
    ((2, 2, 8, 8), 3, 2, 0, 1, True),                 # ceil_mode dropping a window outside
    ((2, 2, 11, 9), 3, 1, 1, 2, False),               # dilation
    ((2, 3, 8, 9), (2, 3), (1, 2), (1, 0), 1, False), # non-square
    ((2, 3, 8, 8), 2, None, 0, 1, False),             # stride defaults to kernel_size
    ((3, 9, 11), 3, 2, 0, 1, False),                  # 3-d (unbatched) input
    ((1, 2, 20, 19), 17, 1, 8, 1, False),             # 289-element window: int32 offsets
    # Rows with windows inside the input but no such column (the C++ kernel once looped forever):
    ((1, 2, 5, 2), 3, 1, 1, 1, False),                # 3/1/1 on a map 2 wide
    ((1, 2, 8, 3), 5, 1, 2, 1, False),                # SPP's 5/1/2 on a map 3 wide
    ((1, 2, 1, 2), (1, 3), (1, 2), (0, 1), 1, True),  # 1x3 windows on one row of 2
    # A 1x1 output (global pooling) reads as both layouts: the gradient must still take the input's.
    ((2, 3, 4, 4), 4, None, 0, 1, False),
]
LAYOUTS = ["contiguous", "channels_last", "transposed", "channels_last_transposed", "channel_slice"]


def make_input(shape, layout, dtype=torch.float32, device="cpu", values="normal", seed=0):
    generator = torch.Generator().manual_seed(seed)
    if values == "ties":  # few distinct values: every window has equal maxima
        x = torch.randint(0, 3, shape, generator=generator).to(dtype)
    else:
        x = torch.randn(shape, generator=generator, dtype=dtype)
    if values == "nan_inf":
        mask = torch.rand(shape, generator=generator)
        x[mask < 0.1] = float("nan")
        x[(mask >= 0.1) & (mask < 0.5)] = float("-inf")
    return in_layout(x.to(device), layout).requires_grad_()


def pool(fn, x, geometry, grad_seed=1):
    _, kernel, stride, padding, dilation, ceil_mode = geometry
    out, indices = fn(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, return_indices=True)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=x.dtype).to(x.device)
    (dx,) = torch.autograd.grad(out, x, grad)
    return out, indices, dx


# Not the 'reference' backend: it is torch's own max_pool2d (its plumbing: test_other_dtypes).
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g[:5])) + ("-ceil" if g[5] else ""))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("values", ["normal", "ties", "nan_inf"])
def test_matches_torch_bit_for_bit(backend, device, geometry, layout, values):
    x = make_input(geometry[0], layout, device=device, values=values)
    with cnnfast.backend(backend):
        out, indices, dx = pool(cnnfast.functional.max_pool2d, x, geometry)
    out_t, indices_t, dx_t = pool(F.max_pool2d, x, geometry)
    assert torch.equal(out.isnan(), out_t.isnan())
    assert torch.equal(out.nan_to_num(), out_t.nan_to_num())
    assert torch.equal(indices, indices_t)
    assert torch.equal(dx, dx_t)
    # torch's layouts too (its suggest_memory_format): channels_last only for channels innermost
    # with W inside H. The int64 indices are computed from the offsets by elementwise ops, whose
    # strides for size-1 dims (which never step: a 1x1 output) are their own.
    assert (out.stride(), dx.stride()) == (out_t.stride(), dx_t.stride())
    assert stepping_strides(indices) == stepping_strides(indices_t)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(backend, device, dtype):
    geometry = GEOMETRIES[2]
    x = make_input(geometry[0], "contiguous", dtype, device)
    with cnnfast.backend(backend):
        out, indices, dx = pool(cnnfast.functional.max_pool2d, x, geometry)
    out_t, indices_t, dx_t = pool(F.max_pool2d, x, geometry)
    assert out.dtype == dtype and dx.dtype == dtype
    assert torch.equal(out, out_t) and torch.equal(indices, indices_t)  # a maximum is exact
    if dtype == torch.float64:
        assert torch.equal(dx, dx_t)
    else:  # overlapping windows add gradients: rounding may differ from torch's
        x64 = x.detach().double().requires_grad_()
        _, _, exact = pool(F.max_pool2d, x64, geometry)
        assert_low_precision_close(dx, dx_t, exact)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[3], GEOMETRIES[5]], ids=["3s2", "ceil", "dilation"])
def test_gradcheck_fp64(backend, device, geometry):
    # Distinct values, far apart relative to gradcheck's step, so that no argmax moves; small,
    # because gradcheck evaluates the op twice per input element (slow under the interpreter).
    shape = (1, 2, 7, 9)
    x = (torch.randperm(torch.Size(shape).numel(), generator=torch.Generator().manual_seed(0)).double() * 0.1)
    x = x.reshape(shape).to(device).requires_grad_()
    _, kernel, stride, padding, dilation, ceil_mode = geometry
    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(
            lambda t: cnnfast.functional.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode), (x,))


@pytest.mark.parametrize("op_name", ["max_pool2d", "max_pool2d_triton"])
def test_opcheck(op_name):
    op, device = registered_op(op_name)
    for layout in ("contiguous", "channels_last"):
        x = make_input((2, 3, 9, 10), layout, device=device, values="ties")
        torch.library.opcheck(op, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
    torch.library.opcheck(op, (make_input((3, 7, 8), "contiguous", torch.float64, device), [2, 2], [1, 1], [0, 0],
                               [2, 1], False))


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_torch_compile_fullgraph(backend, device):
    pool_module = cnnfast.nn.MaxPool2d(3, 2)
    x = make_input((2, 3, 13, 13), "contiguous", device=device)
    with cnnfast.backend(backend):
        compiled = torch.compile(pool_module, fullgraph=True)(x)
        (dx,) = torch.autograd.grad(compiled.sum(), x)
    out_t = F.max_pool2d(x, 3, 2)
    (dx_t,) = torch.autograd.grad(out_t.sum(), x)
    assert torch.equal(compiled, out_t) and torch.equal(dx, dx_t)


def test_module_is_drop_in():
    for args, kwargs in [((3, 2), {}), ((2,), {"padding": 1, "ceil_mode": True}), ((3,), {"dilation": 2})]:
        ours, theirs = cnnfast.nn.MaxPool2d(*args, **kwargs), torch.nn.MaxPool2d(*args, **kwargs)
        assert repr(ours) == repr(theirs) and vars(ours) == vars(theirs)
        assert isinstance(ours, torch.nn.MaxPool2d)  # layer walks and pooling swaps find it
        x = make_input((2, 3, 9, 9), "contiguous")
        assert torch.equal(ours(x), theirs(x))
    out, indices = cnnfast.nn.MaxPool2d(3, 2, return_indices=True)(x)
    assert torch.equal(indices, torch.nn.MaxPool2d(3, 2, return_indices=True)(x)[1])


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_keeps_a_byte_per_output_for_backward(backend, device):
    if backend == "reference":
        pytest.skip("the reference keeps what plain torch keeps")
    x = make_input((2, 16, 27, 27), "contiguous", device=device)
    with cnnfast.backend(backend):
        out, saved = cnnfast.saved_tensor_bytes(cnnfast.functional.max_pool2d, x, 3, 2)
    _, saved_torch = cnnfast.saved_tensor_bytes(F.max_pool2d, x, 3, 2)
    assert saved == out.numel()  # one uint8 offset per output, nothing else
    assert saved * 10 <= saved_torch


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch_gives_empty_result(backend, device):
    x = torch.randn(0, 3, 7, 7, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        out = cnnfast.functional.max_pool2d(x, 3, 2)
        out.sum().backward()
    assert out.shape == (0, 3, 3, 3) and x.grad.shape == x.shape


@pytest.mark.parametrize("call,error,words", [
    (lambda: cnnfast.functional.max_pool2d(torch.randn(5, 5), 2), ValueError, "input"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 3, 5, 5), 2), ValueError, "input"),
    (lambda: cnnfast.functional.max_pool2d(torch.ones(1, 2, 5, 5, dtype=torch.bool), 2), TypeError, "input"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 2.0), TypeError, "kernel_size"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), True), TypeError, "kernel_size"),
    # Window offsets are int32: torch's own limit is the same order (ints of 32 bits).
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 1, 2, 2), 70001, 1, 35000), ValueError, "kernel_size"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 0, 5, 5), 2), ValueError, "input"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 0), ValueError, "kernel_size"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), (2, 2, 2)), ValueError, "kernel_size"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 2, stride=0), ValueError, "stride"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 2, padding=-1), ValueError, "padding"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 3, padding=2), ValueError, "padding"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 2, dilation=0), ValueError, "dilation"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 6), ValueError, "kernel_size"),
    (lambda: cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 3, dilation=3), ValueError, "kernel_size"),
    # The one window along W is padding, then a tap past the one-column input: torch gives -inf
    # with an index outside the input (and its backward writes out of bounds).
    (lambda: cnnfast.functional.max_pool2d(torch.randn(2, 3, 7, 1), (1, 2), (2, 1), (0, 1), 2, ceil_mode=True),
     ValueError, "holds only padding"),
])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error, match=words):
        call()


@pytest.mark.parametrize("shape,window", [((5, 5), (2,)), ((1, 2, 3, 5, 5), (2,)), ((1, 2, 5, 5), (3, 1, 2)),
                                          ((1, 2, 5, 5), (6,))], ids=["2-d", "5-d", "padding", "too-large"])
def test_a_tensor_torch_refuses_with_runtime_error_is_one_here_too(shape, window):
    # ValueError by Python's convention, and RuntimeError as torch raises: `except` of either catches it.
    x = torch.randn(shape)
    with pytest.raises(RuntimeError):
        F.max_pool2d(x, *window)
    with pytest.raises(RuntimeError):
        cnnfast.nn.MaxPool2d(*window)(x)


def test_arguments_torch_takes_as_ints_are_taken():
    # numpy integers (from a config or a sweep) and integer 0-d tensors, as torch.nn.MaxPool2d takes them.
    x = torch.randn(1, 2, 7, 7)
    ours = cnnfast.nn.MaxPool2d(np.int64(3), stride=torch.tensor(2), padding=np.int32(1))(x)
    torch.testing.assert_close(ours, F.max_pool2d(x, 3, 2, 1), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_input_pools_as_torch(dtype):
    # Label maps and masks: no gradient, nothing to keep; cnnfast.convert swaps every MaxPool2d.
    x = torch.randint(0, 100, (2, 3, 7, 7)).to(dtype)
    ours, indices = cnnfast.functional.max_pool2d(x, 3, 2, 1, return_indices=True)
    theirs, their_indices = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    assert ours.dtype == dtype and torch.equal(ours, theirs) and torch.equal(indices, their_indices)


# Not the Triton interpreter: a window of 2^24 elements would take it minutes.
@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.id not in ("reference-cpu", "triton-interpreter")])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_windows_past_float_precision_keep_the_exact_argmax(backend, device, layout):
    """A window of more than 2^24 elements: an argmax offset counted in float32 would round (to an
    even one), and the gradient would go to an element that is not the maximum."""
    width = 2**24 + 2
    x = torch.zeros(1, 2, 1, width, device=device)
    x[..., width - 1] = 1.0  # offset 2^24 + 1, which float32 cannot hold
    x = in_layout(x, layout).requires_grad_()
    with cnnfast.backend(backend):
        out, indices = cnnfast.functional.max_pool2d(x, (1, width), 1, return_indices=True)
    (dx,) = torch.autograd.grad(out, x, torch.tensor([2.0, 3.0], device=device).view(1, 2, 1, 1))
    assert out.flatten().tolist() == [1.0, 1.0] and indices.flatten().tolist() == [width - 1] * 2
    assert dx[..., width - 1].flatten().tolist() == [2.0, 3.0] and dx.count_nonzero() == 2


def test_direct_op_call_with_bad_window_raises_instead_of_reading_out_of_bounds():
    if not cnnfast.extension_loaded():
        pytest.skip("cnnfast._C not built")
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        torch.ops.cnnfast.max_pool2d(torch.randn(1, 2, 5, 5), [3, 3], [1, 1], [0, 0], [3, 3], False)
