"""What every op's tests share: the backends that run here, layouts, the low-precision rule, and
the step-by-step comparison of a module with the torch.nn modules it replaces, and the cpp-cpu tests
run again against a stand-in cnnfast._C."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnfast


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_params(reference: bool = True):
    """(backend, device) pairs, as pytest params; those that cannot run here are skipped with the
    reason, never faked. reference=False leaves out the reference backend, for tests whose torch
    side is the reference formula itself."""
    no_ext = not cnnfast.extension_loaded()
    no_gpu = not torch.cuda.is_available()
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return [
        *([pytest.param("reference", "cpu", id="reference-cpu")] if reference else []),
        pytest.param("cpu", "cpu", id="cpp-cpu",
                     marks=pytest.mark.skipif(no_ext, reason="cnnfast._C not built")),
        pytest.param("triton", "cpu", id="triton-interpreter",
                     marks=pytest.mark.skipif(no_ext or not interpret or not _triton_installed(),
                                              reason="Triton interpreter runs CPU tensors only without a GPU")),
        # With a GPU, CUDA kernels that failed to build fail these tests rather than skip them,
        # unless the build was told to leave them out.
        pytest.param("cuda", "cuda", id="cuda",
                     marks=pytest.mark.skipif(no_gpu or os.environ.get("CNNFAST_CUDA") == "0",
                                              reason="needs a GPU (and a build with CNNFAST_CUDA other than 0)")),
        pytest.param("triton", "cuda", id="triton-cuda",
                     marks=pytest.mark.skipif(no_gpu or not _triton_installed(), reason="needs a GPU and triton")),
    ]


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """t's values, on t's device, in the memory layout `layout`: "contiguous"; "channels_last"
    (channels innermost, for 3-d unbatched input too); "transposed" (the last two dims swapped in
    memory, so they do not merge into one stride); "channels_last_transposed" (both); "channel_slice" /
    "channels_last_slice" (a view of the channels [2, 2 + C) of a wider contiguous / channels_last
    buffer: non-contiguous); "batch_inner" (dense, the batch innermost); "channels_between"
    (dense, [N][H][C][W]: the channels between two spatial dims); "transposed_slice" (a view of the
    first W columns of a wider buffer laid out as "transposed": neither dense nor in NCHW order)."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        return t.movedim(-3, -1).contiguous().movedim(-1, -3)
    if layout == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels_last_transposed":  # channels innermost, then H and W swapped
        return in_layout(t.transpose(-1, -2), "channels_last").transpose(-1, -2)
    if layout in ("channel_slice", "channels_last_slice"):
        n, c = t.shape[:2]
        wide = in_layout(t.new_zeros((n, c + 5) + t.shape[2:]),
                         "channels_last" if layout == "channels_last_slice" else "contiguous")
        wide[:, 2:2 + c] = t
        return wide[:, 2:2 + c]
    if layout == "batch_inner":
        return t.movedim(0, -1).contiguous().movedim(-1, 0)
    if layout == "channels_between":
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "transposed_slice":
        w = t.shape[-1]
        wide = in_layout(t.new_zeros(t.shape[:-1] + (w + 3,)), "transposed")
        wide[..., :w] = t
        return wide[..., :w]
    raise ValueError(f"unknown layout {layout!r}")


def stepping_strides(t: torch.Tensor) -> list[int]:
    """t's strides but those of its size-1 dims, which never step: its layout, whatever strides
    those dims happen to carry."""
    return [stride for stride, size in zip(t.stride(), t.shape) if size != 1]


def registered_op(name: str):
    """(torch.ops.cnnfast.<name>, the device to check it on); skips where it cannot run here."""
    if not cnnfast.extension_loaded():
        pytest.skip("cnnfast._C not built")
    if name.endswith("triton") and not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton runs neither natively nor interpreted here")
    return getattr(torch.ops.cnnfast, name), ("cuda" if torch.cuda.is_available() else "cpu")


def assert_low_precision_close(result: torch.Tensor, torch_result: torch.Tensor, exact: torch.Tensor) -> None:
    """Against an fp64 `exact`: our max error at most twice that of torch's own op run in the same
    dtype (`torch_result`). fp16/bf16 (DESIGN.md's rule): where torch happens to be nearly exact,
    one unit of the dtype's epsilon at the largest magnitude is allowed instead, so that a rounding
    torch gets luckier does not demand exactness. fp32 (DESIGN.md asks for the last ulp torch can):
    that unit is allowed on top of twice torch's error, as neither result is rounded to a coarse
    grid: a reduction's summation order and LRN's s^-0.75 through correctly rounded square roots
    rather than pow (csrc/common/lrn.h) differ from torch's by a rounding or two."""
    ours = (result.double() - exact).abs().max().item()
    theirs = (torch_result.double() - exact).abs().max().item()
    one_ulp = torch.finfo(result.dtype).eps * exact.abs().max().item()
    if result.dtype == torch.float32:
        assert ours <= 2 * theirs + one_ulp, f"error {ours:.3g} > 2 x torch's {theirs:.3g} + {one_ulp:.3g}"
    else:
        assert ours <= max(2 * theirs, one_ulp), \
            f"error {ours:.3g} > max(2 x torch's {theirs:.3g}, {one_ulp:.3g})"


def state_dict_lines(model: torch.nn.Module) -> list[str]:
    """'key [shape]' per state_dict entry, in order: the form of the committed key fixtures."""
    return [f"{k} {list(v.shape)}" for k, v in model.state_dict().items()]


def assert_state_dict_layout(model: torch.nn.Module, expected: dict) -> None:
    """`model`'s keys and shapes are a fixture's (tests/fixtures/*_state_dicts.json): every line
    where the fixture lists them, else their count and hash; and the parameter count it records."""
    lines = state_dict_lines(model)
    if "keys_and_shapes" in expected:
        assert lines == expected["keys_and_shapes"]
    assert len(lines) == expected["count"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == expected["sha256"]
    if "parameters" in expected:
        assert sum(p.numel() for p in model.parameters()) == expected["parameters"]


def training_step(module: torch.nn.Module, *inputs_and_grad, seed: int | None = None):
    """One forward of module(*inputs) on fresh leaf copies of the tensor inputs (None passes
    through) and its backward, the last argument being the output's gradient: (output, then each
    input's gradient, None for a None input). seed: torch's global seed, set just before the
    forward, so that two modules draw the same dropout masks."""
    *inputs, grad = inputs_and_grad
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    if seed is not None:
        torch.manual_seed(seed)
    y = module(*leaves)
    y.backward(grad)
    return (y, *(None if t is None else t.grad for t in leaves))


def assert_state_matches(ours: torch.nn.Module, theirs: torch.nn.Module, rtol: float = 1e-10,
                         atol: float = 1e-12, where: str = "") -> None:
    """Every parameter's gradient and every buffer (running statistics, num_batches_tracked) of
    `ours` against `theirs`, paired in registration order: the names may differ (BNReLUConv2d's
    bn.weight is nn.Sequential's 0.weight), their number and shapes may not."""
    for kind, mine, other in (("grad", ours.named_parameters(), theirs.named_parameters()),
                              ("buffer", ours.named_buffers(), theirs.named_buffers())):
        mine, other = list(mine), list(other)
        assert [tuple(t.shape) for _, t in mine] == [tuple(t.shape) for _, t in other], \
            f"{where}{kind}s of {[n for n, _ in mine]} against {[n for n, _ in other]}"
        for (name, a), (their_name, b) in zip(mine, other):
            if kind == "grad":
                a, b = a.grad, b.grad
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                       msg=lambda m, label=f"{where}{name} ({their_name}) {kind}": f"{label}: {m}")


def assert_steps_match(backend: str, ours: torch.nn.Module, theirs: torch.nn.Module, modes, make_step, seed: int,
                       rtol: float = 1e-10, atol: float = 1e-12, reference=None, check=None) -> list:
    """Runs `ours` (under `backend`) and `theirs` through `modes` ("train" / "eval"), each step on
    new inputs: make_step(generator) -> (inputs, the output's gradient). After each step, checks
    the output and every input's gradient (training_step), then every parameter's gradient and
    buffer (assert_state_matches). reference(*inputs), called before the step (on the state it
    starts from), is an output ours must also give; check(ours_result, theirs_result) adds a test's
    own checks. Both draw the same dropout masks (the step's index as the seed). Returns our outputs."""
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for index, mode in enumerate(modes):
        for module in (ours, theirs):
            module.train(mode == "train")
        inputs, grad = make_step(generator)
        expected = None if reference is None else reference(*inputs)
        with cnnfast.backend(backend):
            result = training_step(ours, *inputs, grad, seed=index)
        their_result = training_step(theirs, *inputs, grad, seed=index)
        where = f"{mode} step {index}, "
        names = ["output"] + [f"input {i} grad" for i in range(len(inputs))]
        for name, a, b in zip(names, result, their_result):
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, label=where + name: f"{label}: {m}")
        if expected is not None:
            torch.testing.assert_close(result[0], expected, rtol=rtol, atol=atol,
                                       msg=lambda m: f"{where}output against the reference: {m}")
        if check is not None:
            check(result, their_result)
        assert_state_matches(ours, theirs, rtol, atol, where)
        for p in [*ours.parameters(), *theirs.parameters()]:
            p.grad = None
        outputs.append(result[0])
    return outputs


def assert_training_steps_match(ours: torch.nn.Module, reference: torch.nn.Module, inputs, modes,
                                rtol: float = 1e-9, atol: float = 1e-10) -> None:
    """One step per (mode, input) on both models, which hold the same state: the same outputs,
    input gradients, parameter gradients (by name) and buffers (running statistics,
    num_batches_tracked) after each. Dropout draws the same masks in both (the RNG seeded per step;
    cnnfast's ops draw no random numbers of their own)."""
    for step, (mode, x) in enumerate(zip(modes, inputs)):
        results = []
        for model in (ours, reference):
            model.train(mode == "train")
            model.zero_grad()
            xi = x.clone().requires_grad_()
            torch.manual_seed(step)
            y = model(xi)
            (y.square().sum() + y[:, 0].sum()).backward()
            results.append((y, xi.grad, {n: p.grad for n, p in model.named_parameters()}, dict(model.named_buffers())))
        (y, dx, grads, buffers), (y_ref, dx_ref, grads_ref, buffers_ref) = results
        where = f"{mode} step {step}"
        torch.testing.assert_close(y, y_ref, rtol=rtol, atol=atol, msg=lambda m: f"{where}, output: {m}")
        torch.testing.assert_close(dx, dx_ref, rtol=rtol, atol=atol, msg=lambda m: f"{where}, input grad: {m}")
        assert grads.keys() == grads_ref.keys() and buffers.keys() == buffers_ref.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], rtol=rtol, atol=atol,
                                       msg=lambda m: f"{where}, {name}: {m}")
        for name in buffers:
            torch.testing.assert_close(buffers[name], buffers_ref[name], rtol=rtol, atol=atol,
                                       msg=lambda m: f"{where}, {name}: {m}")


def randomise_batch_norms(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN parameters and running statistics (those a layer has: affine=False and
    track_running_stats=False leave some out), so that every term is exercised; returns `model`."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for t, (low, high) in ((m.weight, (0.5, 1.5)), (m.running_var, (0.5, 1.5)),
                                       (m.bias, (-0.2, 0.2)), (m.running_mean, (-0.2, 0.2))):
                    if t is not None:
                        t.copy_(torch.empty(t.shape).uniform_(low, high, generator=generator))
    return model


def assert_close_to_scale(actual, expected, tol, msg=""):
    """Elementwise within tol of the tensor's largest magnitude: fp64 sums over many terms differ
    in their order between the fused and the plain modules, at about 1e-16 of the largest term."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * float(expected.detach().abs().max()), msg=msg)


def assert_step_matches(ours, theirs, x, tol=1e-10):
    """One step in the models' current modes, with a random output gradient: outputs, input and
    parameter gradients and the whole state_dict after it, each within tol of its own scale (for
    deep models, where assert_training_steps_match's absolute atol would be below the rounding)."""
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ours, out_theirs = ours(x_ours), theirs(x_theirs)
    assert_close_to_scale(out_ours, out_theirs, tol)
    grad = torch.randn_like(out_ours)
    out_ours.backward(grad)
    out_theirs.backward(grad)
    assert_close_to_scale(x_ours.grad, x_theirs.grad, tol)
    named = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert_close_to_scale(p.grad, named[name].grad, tol, msg=name)
    theirs_state = theirs.state_dict()
    for name, t in ours.state_dict().items():  # running statistics, num_batches_tracked
        assert_close_to_scale(t, theirs_state[name], tol, msg=name)


def saved_bytes(model, x):
    """Activation bytes kept for backward by a training step of `model` (parameters excluded)."""
    return cnnfast.saved_tensor_bytes(model.train(), x, exclude=list(model.parameters()))[1]


# A small DPN (cnnfast.models.dpn.DPN's arguments) with every block type: 'proj', 'down', 'normal',
# and a stage of one block.
TINY_DPN = dict(k_sec=(2, 3, 1), inc_sec=(4, 6, 8), k_r=16, groups=4, small=True, num_init_features=8, num_classes=5)


# The tests of the kernels themselves (the composite ops and models call the same kernels): what a
# slower stand-in library runs where running every test would take too long.
KERNEL_TEST_FILES = ["tests/test_bn_relu.py", "tests/test_bn_add_relu.py", "tests/test_lrn.py",
                     "tests/test_max_pool2d.py", "tests/test_relu_lrn_max_pool2d.py"]


def assert_cpp_cpu_tests_pass_with(library: str, kernels: str, paths: list[str], variables: dict[str, str]) -> None:
    """Runs the cpp-cpu tests of `paths` in a second pytest process that loads `library`, holding
    the `kernels` kernels ('cpu' or 'cuda-emulated'), as cnnfast._C (tests/conftest.py), with
    `variables` added to its environment, and asserts that they all pass (the emulated CUDA
    kernels, the sanitized builds)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, CNNFAST_C_LIBRARY=library, CNNFAST_C_LIBRARY_KERNELS=kernels, **variables)
    # A compile cache of its own (conftest.py makes one): a graph this process compiled would be
    # found again by its traced graph, with this process's library's rules baked in (the real
    # library's fp64 statistics for fp32 CPU inputs aborted the emulated CUDA kernels' process).
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    # --capture=sys: a report written straight to fd 2 before an abort (AddressSanitizer's, the
    # emulated runtime's) reaches stderr here instead of dying in pytest's capture file.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", "-k", "cpp-cpu",
               *paths]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=3600)
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0, (f"{' '.join(command)}:\n{result.stdout[-20000:]}\n{result.stderr[:5000]}\n"
                                    f"...\n{result.stderr[-5000:]}")
    assert " passed" in summary[0], summary
