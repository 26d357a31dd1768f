"""What every op's tests share: the backends that run here, and the low-precision rule."""
from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import cnnfast


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend_params():
    """(backend, device) pairs, as pytest params; those that cannot run here are skipped with the
    reason, never faked."""
    no_ext = not cnnfast.extension_loaded()
    no_gpu = not torch.cuda.is_available()
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    return [
        pytest.param("reference", "cpu", id="reference-cpu"),
        pytest.param("cpu", "cpu", id="cpp-cpu",
                     marks=pytest.mark.skipif(no_ext, reason="cnnfast._C not built")),
        pytest.param("triton", "cpu", id="triton-interpreter",
                     marks=pytest.mark.skipif(no_ext or not interpret or not _triton_installed(),
                                              reason="Triton interpreter runs CPU tensors only without a GPU")),
        pytest.param("cuda", "cuda", id="cuda",
                     marks=pytest.mark.skipif(no_gpu or not cnnfast.cuda_kernels_built(),
                                              reason="needs a GPU and cnnfast._C built with CUDA")),
        pytest.param("triton", "cuda", id="triton-cuda",
                     marks=pytest.mark.skipif(no_gpu or not _triton_installed(), reason="needs a GPU and triton")),
    ]


def registered_op(name: str):
    """(torch.ops.cnnfast.<name>, the device to check it on); skips where it cannot run here."""
    if not cnnfast.extension_loaded():
        pytest.skip("cnnfast._C not built")
    if name.endswith("triton") and not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("Triton runs neither natively nor interpreted here")
    return getattr(torch.ops.cnnfast, name), ("cuda" if torch.cuda.is_available() else "cpu")


def assert_low_precision_close(result: torch.Tensor, torch_result: torch.Tensor, exact: torch.Tensor) -> None:
    """Rule for fp32/fp16/bf16: against an fp64 `exact`, our max error is at most twice that of
    torch's own op run in the same dtype (`torch_result`), plus one unit of the dtype's epsilon at
    the largest magnitude, so that a case torch happens to round exactly does not demand
    exactness."""
    ours = (result.double() - exact).abs().max().item()
    theirs = (torch_result.double() - exact).abs().max().item()
    one_ulp = torch.finfo(result.dtype).eps * exact.abs().max().item()
    assert ours <= 2 * theirs + one_ulp, f"error {ours:.3g} > 2 x torch's {theirs:.3g} + {one_ulp:.3g}"
