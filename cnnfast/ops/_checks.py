"""Argument checks and shape rules, written once and shared by every backend.

Each check raises with a message that names the argument, before any kernel runs.
"""
from __future__ import annotations

import numbers
import operator
from typing import Sequence

import torch

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_WINDOW = 2**31 - 1  # elements in a pooling window: its argmax offset is an int32 past 256


# torch's ops raise RuntimeError for a tensor they cannot take; Python's convention is ValueError
# (TypeError for a dtype or layout). cnnfast's errors are both, so code written for either catches them.
class InputError(ValueError, RuntimeError):
    """A tensor an op cannot take: its shape, dims, device or size against the op's window."""


class InputDtypeError(TypeError, RuntimeError):
    """A tensor of a dtype or layout an op cannot take."""


def check_tensor(value, name: str, op: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOATING_DTYPES:
        raise InputDtypeError(f"{op}: {name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.layout != torch.strided:
        raise InputDtypeError(f"{op}: {name} must be a dense (strided) tensor, got {value.layout}")


def check_dims(value: torch.Tensor, name: str, op: str, allowed: Sequence[int] | None = None,
               minimum: int | None = None) -> None:
    if allowed is not None and value.dim() not in allowed:
        shapes = " or ".join(f"{d}-d" for d in allowed)
        raise InputError(f"{op}: {name} must be {shapes}, got shape {tuple(value.shape)}")
    if minimum is not None and value.dim() < minimum:
        raise InputError(f"{op}: {name} must have {minimum} or more dims, got shape {tuple(value.shape)}")


def check_module_input(input: torch.Tensor, module: str) -> None:
    """A 4-d input for `module` (a class name), checked before any state changes, with the shape in
    the message, as nn.BatchNorm2d checks its input."""
    if input.dim() != 4:
        raise InputError(f"{module}: expected 4-d input, got shape {tuple(input.shape)}")


def check_same_device(op: str, **tensors: torch.Tensor) -> None:
    values = iter(tensors.values())
    device = next(values).device
    if any(t.device != device for t in values):
        listed = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise InputError(f"{op}: tensors must be on one device, got {listed}")


def check_int(value, name: str, op: str, minimum: int) -> int:
    """An int, or what torch takes as one: a numpy integer, an integer 0-d tensor (anything with
    __index__); never a bool or a float."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int, got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int, got {value!r}") from None
    if value < minimum:
        bound = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{op}: {name} must be {bound}, got {value}")
    return value


def check_conv_dtype(value: torch.Tensor | None, name: str, input: torch.Tensor, op: str) -> None:
    """As F.conv2d: outside autocast (which casts them itself) a convolution's parameters have its
    input's dtype."""
    if value is not None and value.dtype != input.dtype and not torch.is_autocast_enabled(input.device.type):
        raise InputDtypeError(f"{op}: {name} must have input's dtype {input.dtype} (outside autocast, as F.conv2d), "
                              f"got {value.dtype}")


def check_number(value, name: str, op: str) -> float:
    # numbers.Real: numpy's floats and ints too (hyper-parameters read from a config or a sweep);
    # and, as torch's functions take them, one-element real tensors, read once as a constant.
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool and not value.is_complex():
        if value.requires_grad:
            raise TypeError(f"{op}: {name} is a tensor that requires grad; cnnfast takes it as a constant and "
                            f"would not differentiate it: pass float({name}), or {name}.detach()")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a number, got {value!r}")
    return float(value)


def pair(value, name: str, op: str, minimum: int) -> tuple[int, int]:
    """An int or a sequence of two ints, as torch's pooling arguments."""
    if type(value) in (tuple, list) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int \
            and min(value) >= minimum:  # the common case, checked at little cost: ops run once per layer
        return tuple(value)
    try:  # one int for both dims (a numpy or 0-d tensor integer too)
        values = (operator.index(value),) * 2 if not isinstance(value, bool) else tuple(value)
    except TypeError:
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return tuple(check_int(v, name, op, minimum) for v in values)


def pool_stride(stride, kernel: tuple[int, int], op: str) -> tuple[int, int]:
    """A pooling stride as a pair of ints: None or an empty sequence is kernel_size, as in torch."""
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        return kernel
    return pair(stride, "stride", op, minimum=1)


def pool_window(input: torch.Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool, op: str):
    """torch's max-pool arguments checked and normalised, with the pooled (height, width):
    (kernel, stride, padding, dilation, out_hw), each a pair of ints. stride None (or empty) is
    kernel_size, as in torch."""
    if any(s == 0 for s in input.shape[-3:]):
        raise InputError(f"{op}: input must have non-zero channels, height and width, got shape {tuple(input.shape)}")
    kernel = pair(kernel_size, "kernel_size", op, minimum=1)
    stride = pool_stride(stride, kernel, op)
    padding = pair(padding, "padding", op, minimum=0)
    dilation = pair(dilation, "dilation", op, minimum=1)
    if kernel[0] * kernel[1] > MAX_WINDOW:  # window offsets are int32
        raise ValueError(f"{op}: kernel_size={kernel} has more than 2**31 - 1 elements per window")
    for i in range(2):
        if padding[i] > kernel[i] // 2:
            raise InputError(f"{op}: padding must be at most half of kernel_size, got padding={padding} "
                             f"and kernel_size={kernel}")
    out_hw = tuple(pooled_size(input.shape[-2 + i], kernel[i], stride[i], padding[i], dilation[i], bool(ceil_mode))
                   for i in range(2))
    if min(out_hw) <= 0:
        raise InputError(f"{op}: kernel_size={kernel} with dilation={dilation} is larger than the padded input "
                         f"({input.shape[-2] + 2 * padding[0]}x{input.shape[-1] + 2 * padding[1]})")
    if not all(_windows_reach_input(input.shape[-2 + i], kernel[i], stride[i], padding[i], dilation[i], out_hw[i])
               for i in range(2)):
        # torch returns -inf there with an index outside the input, and its backward writes out of bounds.
        raise InputError(f"{op}: with padding={padding} and dilation={dilation}, a window of kernel_size={kernel} "
                         f"holds only padding, no element of the {input.shape[-2]}x{input.shape[-1]} input")
    return kernel, stride, padding, dilation, out_hw


def _windows_reach_input(size: int, kernel: int, stride: int, pad: int, dilation: int, out: int) -> bool:
    """Whether each of the `out` windows along one axis has an element of the input. Only a window
    that starts in the padding can miss it: its taps, `dilation` apart, may step over a short
    input. (A later window starts inside the input, as pooled_size ensures; padding <= kernel // 2
    leaves every window a tap past the padding.)"""
    for o in range(min(out, -(-pad // stride))):  # the windows that start in the padding
        start = o * stride - pad
        first_inside = start + -(start // dilation) * dilation  # the first tap at or after 0
        if first_inside >= size:
            return False
    return True


def lrn_arguments(size, alpha, beta, k, op: str) -> tuple[int, float, float, float]:
    """local_response_norm's size (a positive int) and alpha, beta, k (numbers)."""
    return (check_int(size, "size", op, minimum=1), check_number(alpha, "alpha", op),
            check_number(beta, "beta", op), check_number(k, "k", op))


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout ops compute in and return, as torch's own ops choose it: for 4-d x, that of
    Tensor.suggest_memory_format() (csrc/op_helpers.h `output_memory_format` calls it), written out
    here for the fake functions. channels_last where the strides, from the innermost, run C, W, H,
    N, each at least the span of the one before (a channels_last tensor, a channel slice of one);
    contiguous otherwise, and for the ambiguous cases torch resolves that way (an empty tensor,
    N x 1 x 1 x 1).

    Under torch.compile a size known only at run time (a batch cut by a tensor's value) must not
    be guarded on: a comparison it cannot decide counts the size as non-zero (an empty tensor's
    layout does not matter) and a stride as out of order (contiguous, torch's own fallback)."""
    if x.dim() != 4 or _true_unless_known_false(x.stride(1) == 0):
        return torch.contiguous_format
    least = 0
    for d in (1, 3, 2, 0):  # c10's is_channels_last_strides_2d_s4
        if (_false_unless_known_true(x.shape[d] == 0) or _true_unless_known_false(x.stride(d) < least)
                or (d == 0 and _true_unless_known_false(least == x.stride(1)))):
            return torch.contiguous_format
        least = x.stride(d) * x.shape[d]  # a size of 1 leaves it the stride (0 returned above)
    return torch.channels_last


# A plain bool, or a 0-d tensor under torch.jit.trace (sizes are traced as tensors): its value.
def _false_unless_known_true(condition) -> bool:
    if not isinstance(condition, torch.SymBool):
        return bool(condition)
    from torch.fx.experimental.symbolic_shapes import guard_or_false  # symbolic sizes only: sympy loads late
    return guard_or_false(condition)


def _true_unless_known_false(condition) -> bool:
    if not isinstance(condition, torch.SymBool):
        return bool(condition)
    from torch.fx.experimental.symbolic_shapes import guard_or_true
    return guard_or_true(condition)


def has_example_value(size) -> bool:
    """Whether a size has a value to go by at trace time: an int, or a symbolic size traced from an
    example input (not one known only at run time, such as a batch cut by a tensor's value)."""
    return not isinstance(size, torch.SymInt) or size.node.has_hint()


def check_batch_norm_eps(eps: float, training: bool) -> None:
    """F.batch_norm's own check and message: eps positive with batch statistics, non-negative
    without (NaN passes, as there)."""
    if training and eps <= 0.0:
        raise InputError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise InputError(f"batch_norm eps must be non-negative, but got {eps}")


def with_elementwise_strides(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t with the strides torch's elementwise ops give a result shaped like `like`: empty_like's,
    like's own where it is dense, else dense in like's stride order (read off a meta tensor;
    csrc/op_helpers.h has the same). A copy only where they step differently (dims of size 1
    never step)."""
    target = like if non_overlapping_and_dense(like) else torch.empty_like(like, device="meta")
    if all(a == b for a, b, size in zip(t.stride(), target.stride(), t.shape) if size != 1):
        return t
    return torch.empty_like(like).copy_(t)


def non_overlapping_and_dense(x: torch.Tensor) -> bool:
    """Whether x's elements fill its memory span exactly, in some order of its dims, as C++'s
    TensorImpl::is_non_overlapping_and_dense (torch's Python one is private): each stride, from
    the smallest, is the product of the sizes below it. Dims of size 1 never step and do not count;
    an empty tensor has nothing to walk."""
    if x.numel() == 0:
        return True
    step = 1
    for stride, size in sorted((x.stride(d), x.shape[d]) for d in range(x.dim()) if x.shape[d] != 1):
        if stride != step:
            return False
        step *= size
    return True


def pooled_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output size (as csrc/op_helpers.h `pooled_size`)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def offset_dtype(kernel_size: tuple[int, int]) -> torch.dtype:
    """Window offsets fit a byte for windows of up to 256 elements."""
    return torch.uint8 if kernel_size[0] * kernel_size[1] <= 256 else torch.int32
