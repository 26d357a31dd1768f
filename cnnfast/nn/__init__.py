"""Drop-in torch.nn modules backed by cnnfast's kernels."""
from cnnfast.nn.conv import BNReLUConv2d, convert_sync_bn
from cnnfast.nn.densenet import DenseBlock, DenseLayer, Transition
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.relu_lrn_max_pool import ReLULRNMaxPool2d

__all__ = ["BNReLUConv2d", "convert_sync_bn", "DenseBlock", "DenseLayer", "LocalResponseNorm", "MaxPool2d",
           "ReLULRNMaxPool2d", "Transition"]
