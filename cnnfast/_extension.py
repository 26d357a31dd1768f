"""Loads the compiled library cnnfast._C, which registers the torch.ops.cnnfast operators.

`import cnnfast` works without it (the `reference` backend is plain torch); anything that needs
the compiled kernels calls `require_extension()`, which says what is missing and how to build it.
"""
from __future__ import annotations

import torch

try:
    from cnnfast import _C  # registers the ops

    LOAD_ERROR: str | None = None
    # fp32 inputs of the C++ kernels on CPU accumulate in fp64, as torch's CPU BatchNorm, unless
    # the library is the CUDA kernels built for the CPU (tools/cuda_emulation), which keep fp32.
    CPU_KERNELS_ACCUMULATE_FP32_IN_FP64 = bool(getattr(_C, "cpu_kernels_accumulate_fp32_in_fp64", True))
except ImportError as error:  # not built, or built against another torch
    LOAD_ERROR = str(error)
    CPU_KERNELS_ACCUMULATE_FP32_IN_FP64 = True


def extension_loaded() -> bool:
    return LOAD_ERROR is None


def cuda_kernels_built() -> bool:
    """True when _C has CUDA kernels (it was built with a CUDA torch and nvcc)."""
    return extension_loaded() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "cnnfast::local_response_norm", "CUDA")


def require_extension(what: str) -> None:
    if LOAD_ERROR is not None:
        raise RuntimeError(
            f"cnnfast: {what} needs the compiled extension cnnfast._C, which did not load "
            f"({LOAD_ERROR}). Build it against the installed torch with "
            "`pip install --no-build-isolation .` (or `make build`), or use the 'reference' backend.")
