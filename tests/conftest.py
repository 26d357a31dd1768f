"""Backends under test: every one that runs on this machine.

Without a GPU, Triton kernels run on CPU tensors under its interpreter, which must be switched on
before triton is first imported: hence here, before any test module loads.

torch.compile's on-disk caches start empty for each run: a graph compiled by an earlier run is
found by its traced graph, not by cnnfast's fake functions, so a cached one would skip the fake
function a test is there to check (a change to one passed locally and failed in a clean clone).

CNNFAST_C_LIBRARY, when set, names a stand-in cnnfast._C, loaded before anything imports the real
one, and CNNFAST_C_LIBRARY_KERNELS which kernels it holds: `cuda-emulated`, the CUDA kernels built
for the CPU (tools/cuda_emulation/build.py; tests/test_cuda_emulation.py), or `cpu`, the C++ CPU
kernels (under AddressSanitizer and UBSan, tools/sanitized_build.py, either kind).
"""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_stand_in = os.environ.get("CNNFAST_C_LIBRARY")
if _stand_in:
    _spec = importlib.util.spec_from_file_location("cnnfast._C", _stand_in)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    # Only the CPU kernels accumulate fp32 BatchNorm statistics in fp64: the library is the kind named.
    _kernels = os.environ["CNNFAST_C_LIBRARY_KERNELS"]
    assert bool(_module.cpu_kernels_accumulate_fp32_in_fp64) == (_kernels == "cpu"), \
        f"{_stand_in} does not hold the {_kernels} kernels"
    sys.modules["cnnfast._C"] = _module

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _compile_cache = tempfile.mkdtemp(prefix="cnnfast-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _compile_cache
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)
