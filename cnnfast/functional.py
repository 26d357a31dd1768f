"""The functional API of cnnfast: drop-in replacements for torch.nn.functional calls."""
from cnnfast.ops.lrn import local_response_norm
from cnnfast.ops.max_pool2d import max_pool2d

__all__ = ["local_response_norm", "max_pool2d"]
