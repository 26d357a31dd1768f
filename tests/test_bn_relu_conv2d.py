"""BNReLUConv2d against nn.Sequential(nn.BatchNorm2d, nn.ReLU, nn.Conv2d): outputs, every gradient
and the running statistics over several steps, in training and eval, on every backend here."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import cnnfast
from cnnfast.ops.batch_norm import acc_dtype
from helpers import (assert_low_precision_close, assert_state_matches, assert_steps_match, backend_params, in_layout,
                     randomise_batch_norms, registered_op, training_step)

BACKENDS = backend_params()

# (in, out, kernel, stride, padding, dilation, groups, bias, spatial (H, W))
CONFIGS = [
    (6, 5, 1, 1, 0, 1, 1, False, (5, 7)),     # 1x1: the fused Triton GEMM under 'triton'
    (5, 8, 3, 1, 1, 1, 1, True, (6, 5)),      # 3x3 with bias
    (4, 6, 3, 2, 1, 1, 2, False, (7, 7)),     # strided, grouped
    (3, 4, 5, 1, 2, 2, 1, False, (9, 8)),     # dilated 5x5
    (4, 4, 7, 2, 3, 1, 4, True, (9, 9)),      # 7x7 depthwise with bias
    (6, 3, 1, 2, 0, 1, 1, True, (5, 6)),      # strided 1x1 (aten's convolution, not the GEMM)
]


def make_pair(config, dtype=torch.float64, device="cpu", seed=0, **bn_kwargs):
    """Our module and the Sequential it replaces, with the same (non-trivial) parameters."""
    cin, cout, k, stride, padding, dilation, groups, bias, _ = config
    torch.manual_seed(seed)
    ours = cnnfast.nn.BNReLUConv2d(cin, cout, k, stride, padding, dilation, groups, bias, **bn_kwargs)
    ours = randomise_batch_norms(ours, seed).to(device=device, dtype=dtype)
    theirs = nn.Sequential(copy.deepcopy(ours.bn), nn.ReLU(), copy.deepcopy(ours.conv))
    return ours, theirs


def output_shape(config, x):
    cin, cout, k, stride, padding, dilation, groups, bias, _ = config
    return (x.shape[0], cout) + tuple((size + 2 * padding - dilation * (k - 1) - 1) // stride + 1
                                      for size in x.shape[2:])


def steps_of(config, make_x):
    """make_step for helpers.assert_steps_match: an input from make_x, and a gradient of its output's shape."""
    def make_step(generator):
        x = make_x(generator)
        return (x,), torch.randn(output_shape(config, x), generator=generator, dtype=torch.float64).to(x.device)
    return make_step


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c[0]}to{c[1]}-k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_training_steps_then_eval_match_sequential(backend, device, config, layout):
    ours, theirs = make_pair(config, device=device)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make_x(generator):
        x = torch.randn(2, config[0], *config[8], generator=generator, dtype=torch.float64) * 2 + 0.3
        return x.to(device).contiguous(memory_format=memory_format)

    outputs = assert_steps_match(backend, ours, theirs, ("train", "train", "train", "eval"), steps_of(config, make_x),
                                 seed=1)
    if backend != "reference":
        assert all(y.is_contiguous(memory_format=memory_format) for y in outputs)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("bn_kwargs", [dict(momentum=None), dict(track_running_stats=False), dict(affine=False)],
                         ids=["momentum_none", "no_running_stats", "not_affine"])
def test_batch_norm_options_as_torch(backend, device, bn_kwargs):
    config = CONFIGS[1]
    ours, theirs = make_pair(config, device=device, **bn_kwargs)

    def make_x(generator):
        return (torch.randn(3, config[0], *config[8], generator=generator, dtype=torch.float64) + 1).to(device)

    assert_steps_match(backend, ours, theirs, ("train", "train", "eval", "train"), steps_of(config, make_x), seed=2)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1]], ids=["1x1", "3x3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_error_at_most_twice_torch(backend, device, config, dtype):
    ours, theirs = make_pair(config, dtype=dtype, device=device)
    exact = copy.deepcopy(theirs).double()
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(2, config[0], *config[8], generator=generator) * 2 + 0.3).to(device=device, dtype=dtype)
    grad = torch.randn(output_shape(config, x), generator=generator).to(device=device, dtype=dtype)
    with cnnfast.backend(backend):
        y, dx = training_step(ours, x, grad)
    y_torch, dx_torch = training_step(theirs, x, grad)
    y_exact, dx_exact = training_step(exact, x.double(), grad.double())
    assert y.dtype == dtype and dx.dtype == dtype
    assert_low_precision_close(y, y_torch, y_exact)
    assert_low_precision_close(dx, dx_torch, dx_exact)
    for a, b, c in ((ours.conv.weight, theirs[2].weight, exact[2].weight),
                    (ours.bn.weight, theirs[0].weight, exact[0].weight),
                    (ours.bn.bias, theirs[0].bias, exact[0].bias)):
        assert_low_precision_close(a.grad, b.grad, c.grad)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_autocast_runs_the_convolution_in_low_precision(backend, device):
    config = CONFIGS[1]
    ours, theirs = make_pair(config, dtype=torch.float32, device=device)
    exact = copy.deepcopy(theirs).double()
    x = torch.randn(2, config[0], *config[8], device=device)
    grad = torch.randn(output_shape(config, x), device=device)
    low = torch.bfloat16
    with torch.autocast(device, dtype=low):
        with cnnfast.backend(backend):
            y, dx = training_step(ours, x, grad)
        y_torch, dx_torch = training_step(theirs, x, grad)
    y_exact, dx_exact = training_step(exact, x.double(), grad.double())
    assert y.dtype == y_torch.dtype == low and dx.dtype == dx_torch.dtype == torch.float32
    assert ours.conv.weight.grad.dtype == torch.float32
    # The same computation in the same precisions as torch's autocast: no more than twice its error.
    assert_low_precision_close(y, y_torch, y_exact)
    assert_low_precision_close(dx, dx_torch, dx_exact)
    assert_low_precision_close(ours.conv.weight.grad, theirs[2].weight.grad, exact[2].weight.grad)
    torch.testing.assert_close(ours.bn.running_mean, theirs[0].running_mean)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2]], ids=["1x1", "3x3-grouped"])
def test_gradcheck_fp64(backend, device, training, config):
    cin, cout, k, stride, padding, dilation, groups, bias, _ = config
    generator = torch.Generator().manual_seed(4)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    x = (randn(2, cin, 3, 3) + 0.5).requires_grad_()
    gamma, beta = (randn(cin) + 1.0).requires_grad_(), randn(cin).requires_grad_()
    weight = randn(cout, cin // groups, k, k).requires_grad_()
    running_mean, running_var = randn(cin), randn(cin).abs() + 0.5

    def fn(x, gamma, beta, weight):
        # Copies: gradcheck calls fn many times and the running statistics must not drift.
        return cnnfast.functional.bn_relu_conv2d(x, running_mean.clone(), running_var.clone(), gamma, beta, weight,
                                                 None, stride, padding, dilation, groups, training)

    with cnnfast.backend(backend):
        assert torch.autograd.gradcheck(fn, (x, gamma, beta, weight))


def op_inputs(device, layout="contiguous", bias=True, dtype=torch.float32):
    x = torch.randn(2, 4, 5, 6, device=device, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    mean, invstd = torch.randn(4, device=device, dtype=acc), torch.rand(4, device=device, dtype=acc) + 0.5
    gamma, beta = torch.rand(4, device=device, dtype=dtype) + 0.5, torch.randn(4, device=device, dtype=dtype)
    weight = torch.randn(3, 4, 1, 1, device=device, dtype=dtype)
    return [x.requires_grad_(), mean, invstd, gamma.requires_grad_(), beta.requires_grad_(), weight.requires_grad_(),
            torch.randn(3, device=device, dtype=dtype).requires_grad_() if bias else None]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("kernel,stride", [(3, (1, 2)), (3, (1, 1)), (1, (1, 1))], ids=["3x3-s12", "3x3", "1x1"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_one_channel_in_channels_last_strides_as_torch(backend, device, kernel, stride, training):
    """One input channel with channels_last strides, (H*W, 1, W, 1), which read as contiguous too:
    torch's composition gives its convolution the contiguous ones (relu's output), and torch's CPU
    convolution misreads the others (torch 2.13: values off by up to 1e34 with a stride of (1, 2)).
    The same values, gradients and output layout as torch's; the fake function agrees (opcheck)."""
    config = (1, 2, kernel, stride, 0, 1, 1, True, (6, 4))
    ours, theirs = make_pair(config, dtype=torch.float32, device=device)
    ours.train(training)
    theirs.train(training)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 1, 6, 4, generator=generator).to(device).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_shape = copy.deepcopy(theirs)(x).shape
    grad = torch.randn(out_shape, generator=generator).to(device)
    with cnnfast.backend(backend):
        y, dx = training_step(ours, x, grad)
    y_torch, dx_torch = training_step(theirs, x, grad)
    torch.testing.assert_close(y, y_torch, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx_torch, rtol=1e-4, atol=1e-5)
    assert_state_matches(ours, theirs, rtol=1e-4, atol=1e-5)
    if backend != "reference":
        assert y.stride() == y_torch.stride()
        op_backend = "cpp" if backend in ("cpu", "cuda") else backend
        mean, invstd = torch.zeros(1, device=device), torch.ones(1, device=device)
        torch.library.opcheck(torch.ops.cnnfast.bn_relu_conv2d,
                              (x.detach().requires_grad_(), mean, invstd, ours.bn.weight, ours.bn.bias, ours.conv.weight,
                               ours.conv.bias, list(stride), [0, 0], [1, 1], 1, training, op_backend, ""))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_opcheck(backend):
    _, device = registered_op("bn_relu_conv2d" if backend == "cpp" else "bn_relu_triton")
    op = torch.ops.cnnfast.bn_relu_conv2d
    for layout in ("contiguous", "channels_last"):
        for training in (True, False):
            torch.library.opcheck(op, (*op_inputs(device, layout), [1, 1], [0, 0], [1, 1], 1, training, backend, ""))
    torch.library.opcheck(op, (*op_inputs(device, bias=False), [2, 1], [1, 0], [1, 1], 1, True, backend, ""))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck_fused_1x1_triton_gemms(layout, dtype):
    """The three internal ops of the Triton 1x1 path (forward, weight and input gradient), called
    directly: schema, fake functions and their registration."""
    _, device = registered_op("_conv1x1_bn_relu_triton")
    x, mean, _, _, _, weight, bias = [t if t is None else t.detach()
                                      for t in op_inputs(device, layout, dtype=dtype)]
    acc = acc_dtype(x, "triton")
    scale, shift = torch.rand(4, device=device, dtype=acc) + 0.5, torch.randn(4, device=device, dtype=acc)
    grad_output = torch.randn(2, 3, 5, 6, device=device, dtype=dtype)
    if layout == "channels_last":
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
    for b in (bias, None):
        torch.library.opcheck(torch.ops.cnnfast._conv1x1_bn_relu_triton, (x, scale, shift, weight, b))
    torch.library.opcheck(torch.ops.cnnfast._conv1x1_bn_relu_weight_grad_triton, (grad_output, x, scale, shift))
    torch.library.opcheck(torch.ops.cnnfast._conv1x1_bn_relu_input_grad_triton,
                          (grad_output, x, weight, mean, scale, shift))


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_opcheck_backward(backend):
    _, device = registered_op("bn_relu_conv2d" if backend == "cpp" else "bn_relu_triton")
    op = torch.ops.cnnfast._bn_relu_conv2d_backward
    x, mean, invstd, gamma, beta, weight, _ = [t.detach() if t is not None else None for t in op_inputs(device)]
    grad = torch.randn(2, 3, 5, 6, device=device)
    for mask in ([True] * 5, [True, False, False, True, False], [False, True, True, False, True]):
        for training in (True, False):
            torch.library.opcheck(op, (grad, x, mean, invstd, gamma, beta, weight, True, [1, 1], [0, 0], [1, 1], 1,
                                       training, backend, "", mask))
    torch.library.opcheck(op, (grad, x, mean, invstd, None, None, weight, False, [1, 1], [0, 0], [1, 1], 1, True,
                               backend, "", [True, False, False, True, False]))


def test_opcheck_update_running_stats():
    _, device = registered_op("bn_relu_conv2d")
    mean, var = torch.randn(4, dtype=torch.float64, device=device), torch.rand(4, dtype=torch.float64, device=device)
    running_mean, running_var = torch.zeros(4, device=device), torch.ones(4, device=device)
    torch.library.opcheck(torch.ops.cnnfast._update_running_stats, (running_mean, running_var, mean, var, 0.1, 7))
    expected_var = 0.9 * 1.0 + 0.1 * var * 7 / 6
    torch.ops.cnnfast._update_running_stats(running_mean, running_var, mean, var, 0.1, 7)
    torch.testing.assert_close(running_mean, (0.1 * mean).float())
    torch.testing.assert_close(running_var, expected_var.float())


def test_opcheck_update_running_stats_with_a_count_tensor_gives_the_int_counts_result():
    """The process-group variant (its count a device tensor, never read by the host)."""
    _, device = registered_op("bn_relu_conv2d")
    mean, var = torch.randn(4, dtype=torch.float64, device=device), torch.rand(4, dtype=torch.float64, device=device)
    count = torch.tensor([7.0], dtype=torch.float64, device=device)
    buffers = [(torch.zeros(4, device=device), torch.ones(4, device=device)) for _ in range(2)]
    torch.library.opcheck(torch.ops.cnnfast._update_running_stats_counted, (*buffers[0], mean, var, 0.1, count))
    for (running_mean, running_var), update, n in zip(buffers, (torch.ops.cnnfast._update_running_stats,
                                                               torch.ops.cnnfast._update_running_stats_counted),
                                                       (7, count)):
        running_mean.zero_(), running_var.fill_(1)
        update(running_mean, running_var, mean, var, 0.1, n)
    torch.testing.assert_close(buffers[1], buffers[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_torch_compile_fullgraph(backend, device):
    """Compiled, the op runs the same kernels as in eager (the same values, up to cuDNN's choice of
    algorithm on a GPU) and so matches torch.nn as closely as eager does."""
    config = CONFIGS[1]
    ours, theirs = make_pair(config, dtype=torch.float32, device=device)
    exact = copy.deepcopy(theirs).double()
    compiled_module = copy.deepcopy(ours)
    x = torch.randn(2, config[0], *config[8], device=device)
    grad = torch.randn(output_shape(config, x), device=device)
    with cnnfast.backend(backend):
        y, dx = training_step(ours, x, grad)
        compiled = torch.compile(compiled_module, fullgraph=True)
        y_compiled, dx_compiled = training_step(compiled, x, grad)
    y_torch, dx_torch = training_step(theirs, x, grad)
    y_exact, dx_exact = training_step(exact, x.double(), grad.double())
    torch.testing.assert_close(y_compiled, y)
    torch.testing.assert_close(dx_compiled, dx)
    torch.testing.assert_close(compiled_module.bn.running_var, ours.bn.running_var)
    torch.testing.assert_close(compiled_module.conv.weight.grad, ours.conv.weight.grad)
    assert_low_precision_close(y_compiled, y_torch, y_exact)
    assert_low_precision_close(dx_compiled, dx_torch, dx_exact)
    assert_low_precision_close(compiled_module.conv.weight.grad, theirs[2].weight.grad, exact[2].weight.grad)
    torch.testing.assert_close(compiled_module.bn.running_var, theirs[0].running_var)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[1]], ids=["1x1", "3x3"])
def test_keeps_only_input_and_per_channel_values(backend, device, config):
    ours, theirs = make_pair(config, dtype=torch.float32, device=device)
    x = torch.randn(4, config[0], 12, 12, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        _, saved = cnnfast.saved_tensor_bytes(ours, x)
    _, saved_torch = cnnfast.saved_tensor_bytes(theirs, x)
    # The conv's bias is not needed by its backward.
    parameters = sum(p.numel() * p.element_size() for p in (ours.bn.weight, ours.bn.bias, ours.conv.weight))
    # mean and inverse std, in BatchNorm's accumulation type
    per_channel = 2 * config[0] * torch.empty((), dtype=acc_dtype(x, "triton" if backend == "triton" else "cpp")).element_size()
    assert saved == x.numel() * x.element_size() + parameters + per_channel
    # torch keeps x and the ReLU output (the convolution's input): one full tensor more.
    assert saved_torch >= saved + x.numel() * x.element_size() - per_channel


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_deterministic_gradients(backend, device):
    config = CONFIGS[0]
    results = []
    for _ in range(2):
        ours, _ = make_pair(config, dtype=torch.float32, device=device)
        x = torch.randn(2, config[0], *config[8], generator=torch.Generator().manual_seed(5)).to(device)
        grad = torch.randn(output_shape(config, x), generator=torch.Generator().manual_seed(6)).to(device)
        # cuDNN may choose an atomic (run-to-run varying) weight-gradient algorithm: pin a
        # deterministic one, so that what is checked is cnnfast's BN-ReLU and its reductions.
        with cnnfast.backend(backend), torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            _, dx = training_step(ours, x, grad)
        results.append((dx, ours.bn.weight.grad, ours.conv.weight.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("config", CONFIGS, ids=["1x1", "3x3-bias", "s2-g2", "dil2-5x5", "dw7x7", "s2-1x1"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("input_grad,frozen_conv", [(True, False), (False, False), (False, True)],
                         ids=["all-grads", "no-input-grad", "no-input-grad-frozen-conv"])
def test_flop_counter_counts_the_convolution_as_torch_does(backend, device, config, training, input_grad,
                                                           frozen_conv):
    """FlopCounterMode sees the fused op, not the convolution inside: its formulas must count what
    torch counts for the Sequential it replaces, in the forward and in each backward."""
    ours, theirs = make_pair(config, dtype=torch.float32, device=device)
    x = torch.randn(2, config[0], *config[8], device=device, requires_grad=input_grad)
    for module in (ours.conv, theirs[2]):  # frozen conv: only BN's gradients need the data gradient
        module.requires_grad_(not frozen_conv)
    counts = []
    for module, backward in ((ours, True), (theirs, True), (ours, False), (theirs, False)):
        module.train(training)
        with cnnfast.backend(backend), torch.utils.flop_counter.FlopCounterMode(display=False) as counter, \
                torch.set_grad_enabled(backward):
            y = module(x)
            if backward:
                y.sum().backward()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > counts[2] == counts[3] > 0


def test_module_reads_like_its_parts():
    ours = cnnfast.nn.BNReLUConv2d(4, 6, 3, padding=1, bias=True)
    assert list(ours.state_dict()) == [f"bn.{k}" for k in nn.BatchNorm2d(4).state_dict()] + ["conv.weight", "conv.bias"]
    bn, conv = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 3, padding="same")
    wrapped = cnnfast.nn.BNReLUConv2d.from_modules(bn, conv)
    assert wrapped.bn is bn and wrapped.conv is conv and wrapped.conv.weight is conv.weight
    x = torch.randn(2, 4, 5, 5)
    reference = nn.Sequential(copy.deepcopy(bn), nn.ReLU(), copy.deepcopy(conv))
    torch.testing.assert_close(wrapped(x), reference(x))
    torch.testing.assert_close(bn.running_mean, reference[0].running_mean)  # updated in the shared module


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_wrapped_conv_with_another_padding_mode_runs_as_the_plain_modules(padding_mode):
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm2d(4).double(), nn.Conv2d(4, 6, 3, padding=1, padding_mode=padding_mode).double()
    theirs = nn.Sequential(copy.deepcopy(bn), nn.ReLU(), copy.deepcopy(conv))
    ours = cnnfast.nn.BNReLUConv2d.from_modules(bn, conv)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    grad = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    y, dx = training_step(ours, x, grad)
    y_ref, dx_ref = training_step(theirs, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)
    assert_state_matches(ours, theirs)


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "channels_last_transposed",
                                    "channel_slice", "channels_last_slice"])
def test_output_and_gradient_in_torchs_layouts(backend, device, layout):
    ours, theirs = make_pair(CONFIGS[1], device=device)
    x = in_layout(torch.randn(2, CONFIGS[1][0], *CONFIGS[1][8], dtype=torch.float64, device=device), layout)
    grad = torch.randn(output_shape(CONFIGS[1], x), dtype=torch.float64, device=device)
    with cnnfast.backend(backend):
        y, dx = training_step(ours, x, grad)
    y_ref, dx_ref = training_step(theirs, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    assert (y.stride(), dx.stride()) == (y_ref.stride(), dx_ref.stride())


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
@pytest.mark.parametrize("kernel,padding,dilation", [
    (3, "same", 1), (5, "same", 2), (3, "valid", 1),  # symmetric
    ((2, 3), "same", 1), (4, "same", 3), (2, "same", (1, 2)),  # torch pads one more after (an odd total)
], ids=["3-same", "5-same-dilated", "3-valid", "2x3-same", "4-same-dilated", "2-same-dilated-w"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,out_channels", [((2, 4, 9, 8), 5), ((1, 4, 9, 8), 1), ((1, 4, 1, 6), 5)],
                         ids=["2x4x9x8", "batch-1-one-output-channel", "batch-1-height-1"])
def test_string_padding_is_fused(backend, device, kernel, padding, dilation, layout, shape, out_channels):
    # Batch 1 with one output channel or one row: size-1 dims, where a view of the op's output with
    # its first row / column dropped would already read as dense, with strides other than torch's.
    torch.manual_seed(0)
    ours = cnnfast.nn.BNReLUConv2d(4, out_channels, kernel, padding=padding, dilation=dilation)
    ours = randomise_batch_norms(ours).to(device=device, dtype=torch.float64)
    theirs = nn.Sequential(copy.deepcopy(ours.bn), nn.ReLU(), copy.deepcopy(ours.conv))
    if padding == "valid":  # the same output sizes as 'same' gives: the input larger by the kernel's span
        span = [d * (k - 1) for d, k in zip(ours.conv.dilation, ours.conv.kernel_size)]
        shape = (*shape[:2], shape[2] + span[0], shape[3] + span[1])
    x = in_layout(torch.randn(shape, dtype=torch.float64, device=device), layout)
    with torch.no_grad():
        grad = torch.randn_like(ours.conv(x))  # the conv alone: no BatchNorm step counted
    with cnnfast.backend(backend):
        (y, dx), saved = cnnfast.saved_tensor_bytes(lambda t: training_step(ours, t, grad), x, exclude=ours.parameters())
    y_ref, dx_ref = training_step(theirs, x, grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)
    assert_state_matches(ours, theirs)
    assert (y.stride(), dx.stride()) == (y_ref.stride(), dx_ref.stride())
    assert saved <= x.numel() * x.element_size() + 4 * 4 * 8  # x and a few per-channel vectors: fused


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_batch(backend, device):
    ours, theirs = make_pair(CONFIGS[1], dtype=torch.float32, device=device)
    x = torch.randn(0, 5, 6, 5, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        y = ours(x)
        y.sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    y_ref = theirs(x_ref)
    y_ref.sum().backward()
    assert y.shape == y_ref.shape and x.grad.shape == x.shape
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours.bn, name), getattr(theirs[0], name))
    for a, b in ((ours.bn.weight, theirs[0].weight), (ours.bn.bias, theirs[0].bias),
                 (ours.conv.weight, theirs[2].weight)):
        torch.testing.assert_close(a.grad, b.grad)  # zeros, not NaN


def test_one_value_per_channel_in_training_is_an_error():
    ours = cnnfast.nn.BNReLUConv2d(3, 2, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ours(torch.randn(1, 3, 1, 1))
    ours.eval()
    assert ours(torch.randn(1, 3, 1, 1)).shape == (1, 2, 1, 1)


F_ARGS = dict(running_mean=torch.zeros(3), running_var=torch.ones(3), bn_weight=torch.ones(3), bn_bias=torch.zeros(3),
              weight=torch.randn(4, 3, 3, 3))


def call(**changes):
    args = {"input": torch.randn(2, 3, 5, 5), **F_ARGS, **changes}
    return lambda: cnnfast.functional.bn_relu_conv2d(**args)


@pytest.mark.parametrize("fn,error,words", [
    (call(input=torch.randn(3, 5, 5)), ValueError, "input"),
    (call(input=torch.ones(2, 3, 5, 5, dtype=torch.int64)), TypeError, "input"),
    (call(weight=torch.randn(4, 2, 3, 3)), ValueError, "weight"),
    (call(weight=torch.randn(4, 3, 3)), ValueError, "weight"),
    (call(running_mean=torch.zeros(4)), ValueError, "running_mean"),
    (call(bn_weight=torch.ones(2)), ValueError, "bn_weight"),
    (call(bias=torch.zeros(5)), ValueError, "bias"),
    (call(stride=0), ValueError, "stride"),
    (call(padding=-1), ValueError, "padding"),
    (call(padding="full"), ValueError, "padding"),
    (call(groups=0), ValueError, "groups"),
    (call(running_mean=None), ValueError, "running_mean"),
    (call(running_var=None, training=True), ValueError, "both be None"),
    (call(input=torch.randn(2, 3, 2, 2)), ValueError, "larger than the padded input"),
    # dtypes as torch's BatchNorm and F.conv2d take them (outside autocast), never a silent cast
    (call(input=torch.randn(2, 3, 5, 5, dtype=torch.float64)), TypeError, "running_mean must be torch.float64"),
    (call(bn_weight=torch.ones(3, dtype=torch.float64)), TypeError, "bn_weight"),
    (call(input=torch.randn(2, 3, 5, 5, dtype=torch.bfloat16), running_mean=torch.zeros(3, dtype=torch.float64)),
     TypeError, "running_mean must be torch.bfloat16 or torch.float32"),
    (call(weight=torch.randn(4, 3, 3, 3, dtype=torch.float64)), TypeError, "weight must have input's dtype"),
    (call(running_var=torch.ones(1).expand(3), training=True), ValueError, "running_var is updated in training"),
    # as F.batch_norm: eps positive in training, non-negative in evaluation; no channels with a weight
    (call(eps=0.0, training=True), ValueError, "eps must be positive during training, but got 0.0"),
    (call(eps=-1e-5), ValueError, "eps must be non-negative, but got -1e-05"),
    (call(input=torch.randn(2, 0, 5, 5), running_mean=torch.zeros(0), running_var=torch.ones(0),
          bn_weight=torch.ones(0), bn_bias=torch.zeros(0), weight=torch.randn(4, 0, 3, 3), training=True),
     ValueError, "input has no channels"),
])
def test_bad_input_names_the_argument(fn, error, words):
    with pytest.raises(error, match=words):
        fn()


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if p.values[0] != "reference"])
def test_double_backward_is_refused_not_silently_wrong(backend, device):
    ours, _ = make_pair(CONFIGS[1], device=device)
    x = torch.randn(2, 5, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    with cnnfast.backend(backend):
        loss = ours(x).square().sum()
        with pytest.raises(RuntimeError, match="double backward"):  # at once, before any wrong number
            torch.autograd.grad(loss, x, create_graph=True)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_frozen_convolution(backend, device):
    ours, theirs = make_pair(CONFIGS[1], device=device)
    for module in (ours.conv, theirs[2]):
        module.requires_grad_(False)
    x = torch.randn(2, 5, 6, 5, dtype=torch.float64, device=device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(output_shape(CONFIGS[1], x), dtype=torch.float64, device=device)
    with cnnfast.backend(backend):
        _, dx = training_step(ours, x, grad)
    _, dx_ref = training_step(theirs, x, grad)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.bn.weight.grad, theirs[0].weight.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("x", [torch.randn(2, 3, 8, 8), torch.randn(2, 4, 2, 2), torch.randn(2, 4, 8, 8).double()],
                         ids=["channels", "too-small", "dtype"])
def test_a_tensor_torch_refuses_with_runtime_error_is_one_here_too(x):
    ours, theirs = make_pair((4, 4, 3, 1, 0, 1, 1, False, None), dtype=torch.float32)
    with pytest.raises(RuntimeError):
        theirs(x)
    with pytest.raises(RuntimeError):
        ours(x)


def test_bad_input_leaves_the_state_alone():
    ours = cnnfast.nn.BNReLUConv2d(3, 2, 1)
    with pytest.raises(ValueError, match="4-d"):
        ours(torch.randn(3, 4, 4))
    assert int(ours.bn.num_batches_tracked) == 0
