"""Drop-in torch.nn modules backed by cnnfast's kernels."""
from cnnfast.nn.conv import BNReLUConv2d, convert_sync_bn
from cnnfast.nn.densenet import DenseBlock, DenseLayer, Transition
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.sequential import FusedSequential

__all__ = ["BNReLUConv2d", "convert_sync_bn", "DenseBlock", "DenseLayer", "FusedSequential", "LocalResponseNorm", "MaxPool2d",
           "Transition"]
from cnnfast.nn.dpn import DualPathBlock

__all__ += ["DualPathBlock"]
