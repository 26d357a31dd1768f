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
from helpers import KERNEL_TEST_FILES, assert_cpp_cpu_tests_pass_with  # noqa: E402

BUILD_DIR = emulation.DEFAULT_BUILD_DIR
STAND_IN = os.environ.get("CNNFAST_C_LIBRARY")


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


def test_the_rewrite_turns_cuda_syntax_into_calls_of_the_runtime_and_refuses_unknown_forms():
    text, launches = emulation.rewrite_cuda_syntax(
        "detail::k<W, true>\n      <<<grid(), block(), 0, stream>>>(x, y);", "example.cuh")
    assert launches == 1
    assert text == ("::cuda_emulation::launch([](auto... a) { detail::k<W, true>(a...); }, "
                    "grid(), block(), 0, stream)(x, y);")
    text, _ = emulation.rewrite_cuda_syntax("  __shared__ Moments<acc_t> shared[kBnThreads];", "example.cuh")
    assert text == "  static Moments<acc_t>* const shared = ::cuda_emulation::shared_array<Moments<acc_t>>(kBnThreads);"
    with pytest.raises(SystemExit, match="__shared__"):
        emulation.rewrite_cuda_syntax("extern __shared__ float ring[];", "example.cuh")


@pytest.fixture(scope="module")
def emulated_library():
    # In its own process: building loads the library, whose registrations would clash with the
    # real cnnfast._C that this process has loaded.
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "cuda_emulation" / "build.py"), str(BUILD_DIR)],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-20000:]
    return result.stdout.strip().splitlines()[-1]


# as_launched: every cpp-cpu test, each launch as the bindings make it. reversed_grid_stride: the
# kernels' own tests again with a block's threads in reverse order (a missing barrier between a
# lower thread's write and a higher one's read) and at most 2 blocks along x (every grid-stride
# loop takes several steps, as on a GPU whose grid the launch caps).
SCHEDULES = {  # the test paths, and the runtime's environment variables
    "as_launched": (["tests"], {}),
    "reversed_grid_stride": (KERNEL_TEST_FILES,
                             {"CUDA_EMULATION_REVERSE_THREADS": "1", "CUDA_EMULATION_MAX_GRID_X": "2"}),
}


@pytest.mark.skipif(STAND_IN is not None, reason="this process already runs a stand-in cnnfast._C")
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_cuda_kernels_pass_every_cpp_cpu_test_on_the_cpu(emulated_library, schedule):
    assert_cpp_cpu_tests_pass_with(emulated_library, "cuda-emulated", *SCHEDULES[schedule])
