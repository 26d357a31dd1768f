"""Backends under test: every one that runs on this machine.

Without a GPU, Triton kernels run on CPU tensors under its interpreter, which must be switched on
before triton is first imported: hence here, before any test module loads.

torch.compile's on-disk caches start empty for each run: a graph compiled by an earlier run is
found by its traced graph, not by cnnfast's fake functions, so a cached one would skip the fake
function a test is there to check (a change to one passed locally and failed in a clean clone).
"""
import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _compile_cache = tempfile.mkdtemp(prefix="cnnfast-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _compile_cache
    atexit.register(shutil.rmtree, _compile_cache, ignore_errors=True)
