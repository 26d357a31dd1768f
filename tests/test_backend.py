"""Backend selection: the environment variable, the context manager, and clear errors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import cnnfast
from cnnfast._backend import resolve


def test_context_manager_nests_and_restores():
    before = cnnfast.current_backend()
    with cnnfast.backend("reference"):
        assert cnnfast.current_backend() == "reference"
        with cnnfast.backend("cpu"):
            assert cnnfast.current_backend() == "cpu"
        assert cnnfast.current_backend() == "reference"
    assert cnnfast.current_backend() == before


def test_unknown_backend_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'fast'"):
        with cnnfast.backend("fast"):
            pass


def test_environment_variable_sets_the_default():
    env = dict(os.environ, CNNFAST_BACKEND="reference")
    code = "import cnnfast; print(cnnfast.current_backend())"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "reference", result.stderr
    env["CNNFAST_BACKEND"] = "gpu"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "CNNFAST_BACKEND" in result.stderr


@pytest.mark.skipif(not cnnfast.extension_loaded(), reason="cnnfast._C not built")
def test_auto_sends_cpu_tensors_to_the_cpp_kernels():
    with cnnfast.backend("auto"):
        assert resolve("local_response_norm", torch.randn(1, 3, 2, 2)) == "cpp"


def test_forcing_cuda_on_cpu_tensors_is_a_clear_error():
    with cnnfast.backend("cuda"), pytest.raises(RuntimeError, match="cannot run tensors on cpu"):
        cnnfast.functional.local_response_norm(torch.randn(1, 3, 2, 2), 3)


def test_a_backend_block_holds_in_its_own_thread_only():
    import threading
    entered, leave, seen = threading.Event(), threading.Event(), {}

    def inside():
        with cnnfast.backend("reference"):
            entered.set()
            leave.wait(timeout=60)
            seen["inside"] = cnnfast.current_backend()

    before = cnnfast.current_backend()
    thread = threading.Thread(target=inside)
    thread.start()
    entered.wait(timeout=60)
    seen["outside"] = cnnfast.current_backend()  # while the other thread is inside its block
    leave.set()
    thread.join()
    assert seen == {"inside": "reference", "outside": before}


@pytest.mark.skipif(not cnnfast.extension_loaded(), reason="cnnfast._C not built")
def test_forward_mode_and_torch_func_transforms_run_plain_torch_ops():
    # cnnfast's kernels have reverse-mode formulas only: forward-mode AD through them would drop the
    # tangent, so such calls run the reference ops, whose derivatives torch knows.
    from torch.autograd import forward_ad
    x = torch.randn(1, 3, 4, 4)
    assert resolve("max_pool2d", x) == "cpp"
    with forward_ad.dual_level():
        assert resolve("max_pool2d", forward_ad.make_dual(x, torch.ones_like(x))) == "reference"
        weight = forward_ad.make_dual(torch.randn(3), torch.ones(3))
        assert resolve("bn_add_relu", x, None, weight, None) == "reference"
    seen = []
    torch.func.vmap(lambda t: seen.append(resolve("max_pool2d", t)) or t)(x)
    torch.func.jvp(lambda t: seen.append(resolve("max_pool2d", t)) or t, (x,), (x,))
    assert seen == ["reference", "reference"]
