"""When a fused op may stand in for torch modules: only where it computes exactly what their
forward would. A subclass may override forward, a hook (weight_norm, Grad-CAM, a profiler) expects
to run, a parametrization computes the weight on access, a padding mode other than zeros needs torch's
own convolution: then the plain modules run."""
from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

# The BatchNorm classes whose forward the fused ops reproduce (cnnfast.nn.residual adds BNAddReLU).
FUSABLE_NORM_TYPES = {nn.BatchNorm2d, nn.SyncBatchNorm}


def has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def fusable_norm(bn: nn.Module) -> bool:
    return type(bn) in FUSABLE_NORM_TYPES and not has_hooks(bn)


def fusable_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not has_hooks(conv)
            and not parametrize.is_parametrized(conv))


def plain_conv(conv: nn.Module, kernel: int, stride: int = 1, padding: int = 0, groups: int = 1) -> bool:
    """A fusable, bias-free nn.Conv2d of exactly this geometry: what a block op (the shared-buffer
    DenseNet block, the DPN stage) computes with, reading only the weight."""
    return (fusable_conv(conv) and conv.bias is None and conv.kernel_size == (kernel, kernel)
            and conv.stride == (stride, stride) and conv.padding == (padding, padding) and conv.dilation == (1, 1)
            and conv.groups == groups)


def fusable_activation(relu: nn.Module) -> bool:
    return type(relu) is nn.ReLU and not has_hooks(relu)


def fusable_avg_pool(pool: nn.Module) -> bool:
    # A divisor_override changes the averages, which cnnfast's pooling does not reproduce.
    return type(pool) is nn.AvgPool2d and pool.divisor_override is None and not has_hooks(pool)
