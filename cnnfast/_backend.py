"""Which kernels run an op: C++ (CPU or CUDA), Triton, or plain torch.

`CNNFAST_BACKEND=auto|cpu|cuda|triton|reference` (read at import) sets the default;
`cnnfast.backend(name)` overrides it inside a `with` block. `auto` sends CPU tensors to the C++
kernels and CUDA tensors to the kernels AUTO_CUDA_CHOICE names for that op: the CUDA kernels until
a GPU benchmark has compared them with Triton's (benchmarks/targets.py backend_choice says which).
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch
from torch.autograd import forward_ad

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
# Per thread, as torch's own modes (no_grad, autocast): a `with cnnfast.backend(...)` block in one
# thread (a data-loading or serving thread) leaves the ops of the others alone.
_local = threading.local()


def _forced() -> list[str]:
    if not hasattr(_local, "forced"):
        _local.forced = []
    return _local.forced


def current_backend() -> str:
    forced = _forced()
    return forced[-1] if forced else _default


@contextlib.contextmanager
def backend(name: str):
    """Runs the ops inside the block, in this thread, on one backend: ``with cnnfast.backend("triton"): ...``"""
    forced = _forced()
    forced.append(_validated(name, "cnnfast.backend()"))
    try:
        yield
    finally:
        forced.pop()


def _functorch_or_forward_ad(tensors) -> bool:
    """Whether a tensor is under a torch.func transform (grad, vmap, jvp) or carries a forward-mode
    tangent: cnnfast's kernels have reverse-mode formulas only, which those transforms cannot use
    (forward-mode AD would silently drop the tangent), so plain torch ops run these calls."""
    if torch.compiler.is_compiling():
        return False
    return any(t is not None and (torch._C._functorch.is_functorch_wrapped_tensor(t)
                                  or forward_ad.unpack_dual(t).tangent is not None) for t in tensors)


def fx_tracing() -> bool:
    """Whether torch.fx.symbolic_trace (or a tracer built on it, such as torchvision's
    create_feature_extractor) is tracing. Its Proxies can be neither checked nor dispatched to
    cnnfast's ops: modules then run as the torch.nn modules they stand for, which it records as
    plain torch operations (the traced graph computes torch.nn's numbers, unfused)."""
    symbolic = torch.fx._symbolic_trace
    if hasattr(symbolic, "is_fx_symbolic_tracing"):  # torch.export traces with the same flag set
        return symbolic.is_fx_symbolic_tracing()
    return symbolic._is_fx_tracing_flag and not torch.compiler.is_compiling()


def plain_torch_required(*tensors: torch.Tensor | None) -> bool:
    """Whether plain torch must run an op on `tensors`: the 'reference' backend is chosen, a tensor
    is under a torch.func transform or carries a forward-mode tangent, or torch.onnx.export is
    tracing (ONNX has no cnnfast operators; plain torch's are standard ones)."""
    return current_backend() == "reference" or _functorch_or_forward_ad(tensors) or torch.onnx.is_in_onnx_export()


_warned_missing_extension = False


def resolve(op: str, input: torch.Tensor, *others: torch.Tensor | None) -> str:
    """The concrete backend for `op` on `input` (and the op's other tensors): 'cpp' (cnnfast._C's
    CPU or CUDA kernel), 'triton' or 'reference'."""
    global _warned_missing_extension
    if plain_torch_required(input, *others):
        return "reference"
    name = current_backend()
    device = input.device
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
