"""Backends under test: every one that runs on this machine.

Without a GPU, Triton kernels run on CPU tensors under its interpreter, which must be switched on
before triton is first imported: hence here, before any test module loads.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
