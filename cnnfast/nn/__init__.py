"""Drop-in torch.nn modules backed by cnnfast's kernels."""
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d

__all__ = ["LocalResponseNorm", "MaxPool2d"]
