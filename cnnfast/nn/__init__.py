"""Drop-in torch.nn modules backed by cnnfast's kernels."""
from cnnfast.nn.conv import BNReLUConv2d, convert_sync_bn
from cnnfast.nn.densenet import DenseBlock, DenseLayer, Transition
from cnnfast.nn.dpn import DualPathBlock
from cnnfast.nn.normalization import LocalResponseNorm
from cnnfast.nn.pooling import MaxPool2d
from cnnfast.nn.relu_lrn_max_pool import ReLULRNMaxPool2d
from cnnfast.nn.residual import BNAddReLU
from cnnfast.nn.sequential import FusedSequential

__all__ = ["BNAddReLU", "BNReLUConv2d", "convert_sync_bn", "DenseBlock", "DenseLayer", "DualPathBlock",
           "FusedSequential", "LocalResponseNorm", "MaxPool2d", "ReLULRNMaxPool2d", "Transition"]
