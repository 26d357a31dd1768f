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
        assert resolve("local_response_norm", torch.device("cpu")) == "cpp"


def test_forcing_cuda_on_cpu_tensors_is_a_clear_error():
    with cnnfast.backend("cuda"), pytest.raises(RuntimeError, match="cannot run tensors on cpu"):
        cnnfast.functional.local_response_norm(torch.randn(1, 3, 2, 2), 3)
