"""One module per op: the torch.library op, its fake function, its autograd formula, and the
choice of backend. Importing this package registers them."""
from cnnfast.ops import (batch_norm, bn_add_relu, bn_relu_conv2d, conv1x1_bn_relu, lrn, max_pool2d,  # noqa: F401
                         relu_lrn_max_pool2d)
