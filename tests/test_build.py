"""The build: CUDA kernels compile with nvcc even where they cannot run, and cnnfast imports and
explains itself without its compiled library."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"), reason="nvcc not found")
def test_cuda_kernels_compile_for_sm90():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_cuda_kernels.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "_kernels.cuh" in result.stdout  # it compiled something


def _run_without_extension(code: str) -> subprocess.CompletedProcess:
    # `sys.modules[name] = None` makes `import cnnfast._C` fail as it does when it was never built.
    prelude = "import sys; sys.modules['cnnfast._C'] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_works_without_extension_and_falls_back_to_reference():
    result = _run_without_extension(
        "import warnings, torch, cnnfast\n"
        "assert not cnnfast.extension_loaded() and cnnfast.LOAD_ERROR\n"
        "x = torch.randn(2, 5, 3, 3)\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    y = cnnfast.functional.local_response_norm(x, 3)\n"
        "assert torch.allclose(y, torch.nn.functional.local_response_norm(x, 3))\n"
        "assert any('not built' in str(w.message) for w in caught)\n")
    assert result.returncode == 0, result.stderr


def test_forcing_a_compiled_backend_without_extension_says_how_to_build():
    result = _run_without_extension(
        "import torch, cnnfast\n"
        "with cnnfast.backend('cpu'):\n"
        "    cnnfast.functional.max_pool2d(torch.randn(1, 2, 5, 5), 3)\n")
    assert result.returncode != 0
    assert "pip install --no-build-isolation" in result.stderr
