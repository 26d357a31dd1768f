"""The build: CUDA kernels compile with nvcc even where they cannot run, and cnnfast imports and
explains itself without its compiled library."""
from __future__ import annotations

import os
import re
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


def test_triton_kernels_compile_for_sm90():
    # Compiles (not interprets) every Triton kernel the ops launch, so the interpreter's leniency
    # cannot hide a kernel a GPU would reject: the tool records the launches in a child process.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_triton_kernels.py")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout + result.stderr
    # Installed, the kernels are cnnfast.triton_kernels.*; in a source checkout, triton_kernels.*.
    compiled = {line.split()[1].rstrip(":").removeprefix("cnnfast.") for line in result.stdout.splitlines()
                if line.startswith("ok")}
    # Kernels (launched from the host) are named *_kernel; the other @triton.jit functions are helpers.
    kernels = {f"triton_kernels.{path.stem}.{name}" for path in (ROOT / "triton_kernels").glob("*.py")
               for name in re.findall(r"^@triton\.jit\s*\ndef (\w+_kernel)\(", path.read_text(), re.M)}
    assert kernels and compiled == kernels  # every kernel in triton_kernels/ is launched and compiled


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


def test_a_regular_install_holds_every_package(tmp_path):
    # `make` installs editable, which finds every package from the source tree; a regular
    # `pip install .` copies only those pyproject.toml lists (cnnfast.models was once missing).
    result = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Where a package is missing from the list, setuptools may still copy it as data from an
    # earlier build's manifest (cnnfast.egg-info) but not from a clean checkout: it warns either way.
    assert "absent from the `packages` configuration" not in result.stderr, result.stderr
    source = {p.parent.relative_to(ROOT).as_posix().replace("triton_kernels", "cnnfast/triton_kernels")
              for p in [*ROOT.glob("cnnfast/**/__init__.py"), *ROOT.glob("triton_kernels/**/__init__.py")]}
    built = {p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("cnnfast/**/__init__.py")}
    assert built == source
    modules = {p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("cnnfast/**/*.py")}
    assert {"cnnfast/models/resnet.py", "cnnfast/triton_kernels/lrn.py", "cnnfast/ops/lrn.py"} <= modules
