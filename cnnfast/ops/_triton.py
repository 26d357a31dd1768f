"""Imports the Triton kernels lazily: triton is optional, and TRITON_INTERPRET must be set before
it is first imported."""
from __future__ import annotations

import contextlib
import importlib

import torch

# Installed, the kernels are cnnfast.triton_kernels; in a source checkout they sit at the top of
# the repository as triton_kernels.
_PACKAGES = ("cnnfast.triton_kernels", "triton_kernels")


def triton_module(name: str):
    for package in _PACKAGES:
        module = f"{package}.{name}"
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name == "triton":
                raise RuntimeError("cnnfast: the 'triton' backend needs triton (pip install 'triton>=3.6')") from error
            if error.name is None or not module.startswith(error.name):
                raise
    raise RuntimeError(f"cnnfast: the Triton kernels ({name}) are not installed with this copy of cnnfast")


def on_device(tensor: torch.Tensor):
    """Launches Triton kernels on `tensor`'s GPU: Triton uses the current CUDA device, which need not
    be the tensor's (a model on cuda:1 while cuda:0 is current)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()
