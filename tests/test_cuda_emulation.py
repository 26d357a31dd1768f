"""The CUDA kernels and their bindings, run on the CPU (tools/cuda_emulation/).

No GPU has run cnnfast's CUDA code yet, and nvcc's compile check (test_build.py) says nothing
about its arithmetic. Here the very csrc/cuda/ sources are built for the CPU against an emulated
CUDA runtime (blocks one after another, a block's threads as fibers meeting at real barriers) and
loaded in place of cnnfast._C in a second pytest process, whose cpp-cpu cases then run the CUDA
kernels against torch and the references: every op's values, gradients, layouts, dtypes,
non-finite rules and edge cases, with the CUDA rules (BatchNorm accumulating fp32 in fp32).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "cuda_emulation"))
import build as emulation  # noqa: E402

BUILD_DIR = ROOT / "build" / "cuda_emulation"
EMULATED = os.environ.get("CNNFAST_EMULATED_CUDA_LIBRARY")


@pytest.fixture(scope="module")
def self_test_program():
    return emulation.build_self_test(BUILD_DIR)


@pytest.mark.parametrize("case", ["block_sum", "dynamic_shared", "invalid_launches"])
def test_the_emulated_runtime_runs_blocks_barriers_and_launch_checks_as_cuda(self_test_program, case):
    result = subprocess.run([str(self_test_program), case], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_emulated_runtime_stops_at_a_barrier_some_threads_never_reach(self_test_program):
    result = subprocess.run([str(self_test_program), "divergent_barrier"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0
    assert "__syncthreads() reached by some threads of a block while others exited" in result.stderr


def test_a_launch_that_escapes_the_rewrite_fails_the_build():
    text, launches = emulation.rewrite_cuda_syntax(
        "detail::k<W, true>\n      <<<grid(), block(), 0, stream>>>(x, y);", "example.cuh")
    assert launches == 1
    assert text == ("::cuda_emulation::launch([](auto... a) { detail::k<W, true>(a...); }, "
                    "grid(), block(), 0, stream)(x, y);")
    with pytest.raises(SystemExit, match="extern __shared__"):
        emulation.rewrite_cuda_syntax("extern __shared__ float ring[];", "example.cuh")


@pytest.mark.skipif(EMULATED is not None, reason="this process already runs the emulated kernels")
def test_the_cuda_kernels_pass_every_cpp_cpu_test_on_the_cpu():
    library = emulation.build(BUILD_DIR)
    env = dict(os.environ, CNNFAST_EMULATED_CUDA_LIBRARY=str(library))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cpp-cpu",
               str(ROOT / "tests")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    summary = result.stdout.strip().splitlines()[-1:] or [""]
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert " passed" in summary[0], summary
