"""cnnfast: fast, memory-lean CNN kernels for PyTorch.

    import cnnfast
    cnnfast.nn.LocalResponseNorm(5)            # drop-in for torch.nn.LocalResponseNorm
    cnnfast.functional.max_pool2d(x, 3, 2)     # keeps a uint8 argmax, not the input
    with cnnfast.backend("triton"): ...        # force a backend (auto|cpu|cuda|triton|reference)
    model, report = cnnfast.convert(model)     # swap cnnfast's modules into any model, same weights
    cnnfast.models.get_model("resnet50", weights="resnet50.pth")  # local checkpoints only
"""
from cnnfast._extension import LOAD_ERROR, cuda_kernels_built, extension_loaded
from cnnfast._backend import BACKENDS, backend, current_backend
from cnnfast import ops  # noqa: F401  (registers fake functions and autograd formulas)
from cnnfast import functional, models, nn, reference
from cnnfast.convert import ConversionReport, convert
from cnnfast.fuse import fuse_for_inference
from cnnfast.profiling import saved_tensor_bytes

__version__ = "0.1.0"

__all__ = ["BACKENDS", "ConversionReport", "LOAD_ERROR", "backend", "convert", "cuda_kernels_built", "current_backend",
           "extension_loaded", "functional", "fuse_for_inference", "models", "nn", "reference", "saved_tensor_bytes"]
