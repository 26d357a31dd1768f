"""Backends under test: every one that runs on this machine.

Without a GPU, Triton kernels run on CPU tensors under its interpreter, which must be switched on
before triton is first imported: hence here, before any test module loads.

torch.compile's on-disk caches start empty for each run: a graph compiled by an earlier run is
found by its traced graph, not by cnnfast's fake functions, so a cached one would skip the fake
function a test is there to check (a change to one passed locally and failed in a clean clone).

CNNFAST_EMULATED_CUDA_LIBRARY, when set, names a stand-in cnnfast._C whose CPU kernels are the
CUDA kernels built for the CPU (tests/test_cuda_emulation.py sets it).
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

# tests/test_cuda_emulation.py runs the CPU tests again with the CUDA kernels built for the CPU
# (tools/cuda_emulation/build.py) loaded as cnnfast._C, before anything imports the real one.
_emulated_cuda = os.environ.get("CNNFAST_EMULATED_CUDA_LIBRARY")
if _emulated_cuda:
    _spec = importlib.util.spec_from_file_location("cnnfast._C", _emulated_cuda)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    assert not _module.cpu_kernels_accumulate_fp32_in_fp64, f"{_emulated_cuda} is not the emulated CUDA build"
    sys.modules["cnnfast._C"] = _module

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _compile_cache = tempfile.mkdtemp(prefix="cnnfast-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _compile_cache
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)
