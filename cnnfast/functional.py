"""The functional API of cnnfast: drop-in replacements for torch.nn.functional calls."""
from cnnfast.ops.batch_norm import bn_relu
from cnnfast.ops.bn_add_relu import bn_add_relu
from cnnfast.ops.bn_relu_conv2d import bn_relu_conv2d
from cnnfast.ops.lrn import local_response_norm
from cnnfast.ops.max_pool2d import max_pool2d
from cnnfast.ops.relu_lrn_max_pool2d import relu_lrn_max_pool2d

__all__ = ["bn_add_relu", "bn_relu", "bn_relu_conv2d", "local_response_norm", "max_pool2d", "relu_lrn_max_pool2d"]
