"""Which kernels run an op: C++ (CPU or CUDA), Triton, or plain torch.

`CNNFAST_BACKEND=auto|cpu|cuda|triton|reference` (read at import) sets the default;
`cnnfast.backend(name)` overrides it inside a `with` block. `auto` sends CPU tensors to the C++
kernels and CUDA tensors to whichever of the CUDA and Triton kernels the benchmarks found faster
for that op (AUTO_CUDA_CHOICE).
"""
from __future__ import annotations

import contextlib
import os
import warnings

import torch

from cnnfast._extension import cuda_kernels_built, extension_loaded, require_extension

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")

# The CUDA-tensor choice of `auto`, per op. Decided by `python -m benchmarks` on a GPU; until a
# GPU run has compared them (none yet: see benchmarks/results/), the CUDA C++ kernels are used.
# "bn_relu_conv2d": 'cuda' is the CUDA BN-ReLU kernels around cuDNN; 'triton' would also run 1x1
# convolutions through the Triton GEMM with the BN-ReLU prologue fused in.
AUTO_CUDA_CHOICE = {
    "local_response_norm": "cuda",
    "max_pool2d": "cuda",
    "relu_lrn_max_pool2d": "cuda",
    "bn_relu": "cuda",
    "bn_relu_conv2d": "cuda",
    "bn_add_relu": "cuda",
}


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"cnnfast: unknown backend {name!r} from {source}; expected one of {BACKENDS}")
    return name


_default = _validated(os.environ.get("CNNFAST_BACKEND", "auto"), "CNNFAST_BACKEND")
_forced: list[str] = []


def current_backend() -> str:
    return _forced[-1] if _forced else _default


@contextlib.contextmanager
def backend(name: str):
    """Runs the ops inside the block on one backend: ``with cnnfast.backend("triton"): ...``"""
    _forced.append(_validated(name, "cnnfast.backend()"))
    try:
        yield
    finally:
        _forced.pop()


_warned_missing_extension = False


def resolve(op: str, device: torch.device) -> str:
    """The concrete backend for `op` on `device`: 'cpp' (cnnfast._C's CPU or CUDA kernel),
    'triton' or 'reference'."""
    global _warned_missing_extension
    name = current_backend()
    if name == "reference":
        return "reference"
    if name == "triton":
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("cnnfast: the 'triton' backend runs CPU tensors only under TRITON_INTERPRET=1 "
                               "(set before triton is imported)")
        require_extension("the 'triton' backend")
        return "triton"
    if name in ("cpu", "cuda"):
        if device.type != name:
            raise RuntimeError(f"cnnfast: backend {name!r} cannot run tensors on {device}")
        require_extension(f"the {name!r} backend")
        if name == "cuda" and not cuda_kernels_built():
            raise RuntimeError("cnnfast: cnnfast._C was built without CUDA kernels; rebuild on a machine with "
                               "a CUDA torch and nvcc (FORCE_CUDA=1 forces them)")
        return "cpp"
    # auto
    if not extension_loaded():
        if not _warned_missing_extension:
            warnings.warn("cnnfast._C is not built: running the plain-torch reference ops. "
                          "Build with `pip install --no-build-isolation .`.", stacklevel=3)
            _warned_missing_extension = True
        return "reference"
    if device.type == "cuda":
        choice = AUTO_CUDA_CHOICE.get(op, "cuda")
        if choice == "cuda" and cuda_kernels_built():
            return "cpp"
        return "triton"
    if device.type == "cpu":
        return "cpp"
    return "reference"
