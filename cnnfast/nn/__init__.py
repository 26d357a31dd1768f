"""Drop-in torch.nn modules backed by cnnfast's kernels."""
from cnnfast.nn.conv import BNReLUConv2d
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d

__all__ = ["BNReLUConv2d", "LocalResponseNorm", "MaxPool2d"]
