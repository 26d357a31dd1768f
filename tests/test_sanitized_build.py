"""The cpp-cpu tests again, against cnnfast._C built under AddressSanitizer and UBSan.

A kernel that reads past a tensor and finds a harmless number there passes every value test; on
a GPU the same read is an illegal-address fault, or garbage. tools/sanitized_build.py builds the
real C++ CPU kernels, and the CUDA kernels built for the CPU (tools/cuda_emulation/), with
-fsanitize=address,undefined; a second pytest process loads each in place of cnnfast._C, and the
first out-of-bounds access, signed overflow or misaligned load stops it with the sanitizer's
report.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import sanitized_build  # noqa: E402
from helpers import KERNEL_TEST_FILES, assert_cpp_cpu_tests_pass_with  # noqa: E402

STAND_IN = os.environ.get("CNNFAST_C_LIBRARY")


def sanitizer_runtime_missing() -> str | None:
    try:
        sanitized_build.runtime_libraries()
    except (SystemExit, OSError, subprocess.CalledProcessError) as missing:
        return f"no sanitizer runtime: {missing}"
    return None


RUNTIME_MISSING = sanitizer_runtime_missing()
# Every cpp-cpu test for the CPU kernels (3.5 minutes on the 2-core VM, plus the build); the
# kernels' own tests for the emulated CUDA kernels, which run several times slower under the
# sanitizers (make check-sanitized runs every cpp-cpu test against both).
TEST_PATHS = {"cpu": ["tests"], "cuda-emulated": KERNEL_TEST_FILES}


@pytest.mark.skipif(STAND_IN is not None, reason="this process already runs a stand-in cnnfast._C")
@pytest.mark.skipif(RUNTIME_MISSING is not None, reason=str(RUNTIME_MISSING))
@pytest.mark.parametrize("kind", sanitized_build.KINDS)
def test_the_kernels_pass_the_cpp_cpu_tests_under_address_and_undefined_behaviour_sanitizers(kind):
    # Built in its own process: building loads the library, which needs the sanitizer runtime
    # loaded first and would clash with the real cnnfast._C this process has loaded.
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "sanitized_build.py"), kind], cwd=ROOT,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-20000:]
    library = result.stdout.strip().splitlines()[-1]
    assert_cpp_cpu_tests_pass_with(library, kind, TEST_PATHS[kind], sanitized_build.environment())
