"""Cross-channel local response normalisation in Triton (torch.nn.functional.local_response_norm).

    s_c  = k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2] ∩ [0, C)} x_{c'}^2
    y_c  = x_c * s_c^-beta
    dx_j = dy_j * s_j^-beta - 2*alpha*beta/size * x_j * sum_{c: j in window(c)} dy_c x_c s_c^(-beta-1)

A dense tensor is viewed as [outer, C, inner]: the dims whose strides are below the channels'
make `inner`, the rest `outer`, in any order (as csrc/op_helpers.h LrnGeometry). A "column" is
the C values of one (outer, inner) position; each program owns BLOCK columns and walks their
channels. Each window
sum is added up afresh in channel order from rows still in cache, as the C++ kernels do (a running
sum that subtracts the square leaving the window keeps a rounding residue after a large value,
and a NaN or inf never leaves it). Accumulation is fp32 for fp16/bf16/fp32 and fp64 for fp64.

Only x is kept for backward: s is recomputed from it, which reads less memory than keeping y.
Triton has no indexable register arrays for the C++ kernels' ring of past t values, so the
backward is two kernels: one writes t_c = dy_c x_c s_c^(-beta-1) to a temporary in the
accumulation type, the other sums t over each reverse window and writes dx.

RELU (the fused ReLU-LRN-max-pool, triton_kernels/relu_lrn_max_pool2d.py) normalises relu(x),
applied on every load of x, and its backward applies the ReLU's mask to dx: relu(x) is never
written.
"""
import triton
import triton.language as tl
import torch
from triton.language.extra import libdevice

# Columns per program; 4 warps, two columns per thread.
_BLOCK = 256
_NUM_WARPS = 4

# Which s^-beta to compute (the Power types of csrc/common/lrn.h): the general pow costs far
# more than these kernels' memory traffic, so AlexNet's 0.75 and 0.5 go through sqrt.
_BETA_GENERAL = 0
_BETA_THREE_QUARTERS = 1
_BETA_HALF = 2
_BETA_ZERO = 3  # s^-0 = 1 for every s, infinite or zero too
# On a GPU the general power is libdevice's pow (CUDA's powf/pow, as the CUDA kernels and torch
# compute it); exp2(-beta * log2(s)) would compile to ex2.approx, a few ulp off and flushing
# subnormals. The interpreter has no libdevice, so it computes exp2/log2 in numpy.
_BETA_GENERAL_POW = 4
_INTERPRETED = bool(triton.knobs.runtime.interpret)
# For tools/check_triton_kernels.py, which records launches as a GPU makes them but runs them in the
# interpreter: the constexpr values it cannot run, and the ones computing the same there.
INTERPRETER_STAND_INS = {"BETA_KIND": {_BETA_GENERAL_POW: _BETA_GENERAL}}


@triton.jit
def _sqrt(v):
    # Correctly rounded, as the C++ kernels' sqrt; tl.sqrt is approximate in fp32 on GPU.
    if v.dtype == tl.float64:
        r = tl.sqrt(v)
    else:
        r = tl.sqrt_rn(v)
    return r


@triton.jit
def _div(a, b):
    # IEEE division as in the C++ kernels; fp32 `/` compiles to an approximate division on GPU.
    if b.dtype == tl.float64:
        r = a / b
    else:
        r = tl.div_rn(a, b)
    return r


@triton.jit
def _inverse_power(s, beta, BETA_KIND: tl.constexpr):
    if BETA_KIND == 1:
        r = _div(tl.full(s.shape, 1.0, s.dtype), _sqrt(s))
        p = r * _sqrt(r)
    elif BETA_KIND == 2:
        p = _div(tl.full(s.shape, 1.0, s.dtype), _sqrt(s))
    elif BETA_KIND == 3:
        # pow(s, 0) is 1 for every s, where exp2(0 * log2(s)) is NaN for an infinite or zero s.
        p = tl.full(s.shape, 1.0, s.dtype)
    elif BETA_KIND == 4:
        p = libdevice.pow(s, -beta)
    else:
        p = tl.exp2(-beta * tl.log2(s))
    return p


@triton.jit
def _t_where_infinite(t, s, beta, nan_scale, BETA_KIND: tl.constexpr):
    # As the Power types' t_where_infinite in csrc/common/lrn.h: for beta > 1, where |s| reaches
    # nan_scale (beta * s^(beta-1), or s, overflows the input's dtype), torch's pow backward makes t NaN.
    if BETA_KIND == 0 or BETA_KIND == 4:
        if beta > 1:
            t = tl.where(tl.abs(s) >= nan_scale, float("nan"), t)
    return t


@triton.jit
def _scale(window_sum, alpha_over_size, k):
    return k + alpha_over_size * window_sum


@triton.jit
def _relu(v, RELU: tl.constexpr):
    # torch's relu: NaN stays NaN (a select on v < 0, not a maximum).
    if RELU:
        v = tl.where(v < 0, 0.0, v).to(v.dtype)
    return v


@triton.jit
def _relu_mask(x, grad, RELU: tl.constexpr):
    # torch's threshold_backward: zero where x <= 0 only, so a NaN passes the gradient on.
    if RELU:
        grad = tl.where(x <= 0, 0.0, grad).to(grad.dtype)
    return grad


@triton.jit
def _row_offsets(base, channel, channel_stride):
    # int64: channel * channel_stride exceeds 2**31 for a sample of more than 2**31 elements.
    # (tl.cast, not .to: under the interpreter a loop index is a Python int.)
    return base + tl.cast(channel, tl.int64) * channel_stride


@triton.jit
def _window_sum(ptr, base, mask, first, C, channel_stride, SIZE: tl.constexpr, SQUARE: tl.constexpr,
                ACC: tl.constexpr, BLOCK: tl.constexpr, RELU: tl.constexpr):
    # Sum over channels [first, first + SIZE) clipped to [0, C), in channel order, of the rows of
    # ptr (relu'd when RELU, squared when SQUARE). A clipped channel adds +0, which changes no sum.
    # `first` may differ per lane (the fused ReLU-LRN-max-pool); the loop over the constexpr SIZE
    # unrolls into independent loads, and SIZE is at most 2C + 1 (window).
    total = tl.zeros([BLOCK], dtype=ACC)
    for w in range(0, SIZE):
        channel = first + w
        inside = mask & (channel >= 0) & (channel < C)
        v = _relu(tl.load(ptr + _row_offsets(base, channel, channel_stride), mask=inside, other=0.0).to(ACC), RELU)
        if SQUARE:
            total += v * v
        else:
            total += v
    return total


@triton.jit
def _column_bases(n_cols, inner, outer_stride, lane_stride, BLOCK: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    o = cols // inner
    lane = cols - o * inner
    return o * outer_stride + lane * lane_stride, mask


@triton.jit
def _lrn_forward_kernel(x_ptr, y_ptr, n_cols, inner, C, outer_stride, channel_stride, lane_stride,
                        alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64,
                        SIZE: tl.constexpr, BEFORE: tl.constexpr, BETA_KIND: tl.constexpr,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    base, mask = _column_bases(n_cols, inner, outer_stride, lane_stride, BLOCK)
    # tl.full rather than .to: under the interpreter a float argument arrives as a Python float.
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    for c in range(0, C):
        window_sum = _window_sum(x_ptr, base, mask, c - BEFORE, C, channel_stride, SIZE, True, ACC, BLOCK, False)
        offsets = _row_offsets(base, c, channel_stride)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        power = _inverse_power(_scale(window_sum, alpha_over_size_acc, k_acc), beta_acc, BETA_KIND)
        tl.store(y_ptr + offsets, (x * power).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_t_kernel(dy_ptr, x_ptr, t_ptr, n_cols, inner, C, outer_stride, channel_stride, lane_stride,
                  alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64, nan_scale: tl.float64,
                  SIZE: tl.constexpr, BEFORE: tl.constexpr, BETA_KIND: tl.constexpr, RELU: tl.constexpr,
                  ACC: tl.constexpr, BLOCK: tl.constexpr):
    # t_c = dy_c x_c s_c^(-beta-1), in the C++ kernels' order of operations.
    base, mask = _column_bases(n_cols, inner, outer_stride, lane_stride, BLOCK)
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    nan_scale_acc = tl.full((), nan_scale, ACC)
    for c in range(0, C):
        window_sum = _window_sum(x_ptr, base, mask, c - BEFORE, C, channel_stride, SIZE, True, ACC, BLOCK, RELU)
        scale = _scale(window_sum, alpha_over_size_acc, k_acc)
        power = _inverse_power(scale, beta_acc, BETA_KIND)
        offsets = _row_offsets(base, c, channel_stride)
        x = _relu(tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC), RELU)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(ACC)
        t = _t_where_infinite(_div(dy * x * power, scale), scale, beta_acc, nan_scale_acc, BETA_KIND)
        tl.store(t_ptr + offsets, t, mask=mask)


@triton.jit
def _lrn_dx_kernel(dy_ptr, x_ptr, t_ptr, dx_ptr, n_cols, inner, C, outer_stride, channel_stride, lane_stride,
                   alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64,
                   SIZE: tl.constexpr, BEFORE: tl.constexpr, AFTER: tl.constexpr, BETA_KIND: tl.constexpr,
                   RELU: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * (sum of t over [j - after, j + before]).
    base, mask = _column_bases(n_cols, inner, outer_stride, lane_stride, BLOCK)
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    coefficient = 2.0 * alpha_over_size_acc * beta_acc
    for j in range(0, C):
        window_sum = _window_sum(x_ptr, base, mask, j - BEFORE, C, channel_stride, SIZE, True, ACC, BLOCK, RELU)
        power = _inverse_power(_scale(window_sum, alpha_over_size_acc, k_acc), beta_acc, BETA_KIND)
        if BETA_KIND == 3:  # the sum is exactly 0 whatever t is (csrc/common/lrn.h lrn_backward_columns)
            t_sum = tl.zeros_like(window_sum)
        else:
            t_sum = _window_sum(t_ptr, base, mask, j - AFTER, C, channel_stride, SIZE, False, ACC, BLOCK, False)
        offsets = _row_offsets(base, j, channel_stride)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(ACC)
        dx = _relu_mask(x, dy * power - coefficient * _relu(x, RELU) * t_sum, RELU)
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _geometry(x: torch.Tensor):
    """(outer, C, inner, outer, channel and lane strides) of a dense x walked as [outer][C][inner]
    (as csrc/op_helpers.h LrnGeometry): inner is the channels' stride, 1 where they are innermost;
    with one channel every element is a column of its own."""
    c = x.shape[1]
    inner = x.stride(1) if c > 1 else x.numel()
    outer = x.numel() // (c * inner)
    return outer, c, inner, c * inner, inner, c if inner == 1 else 1


def _beta_kind(beta: float) -> int:
    if beta == 0.75:
        return _BETA_THREE_QUARTERS
    if beta == 0.5:
        return _BETA_HALF
    if beta == 0:
        return _BETA_ZERO
    return _BETA_GENERAL if _INTERPRETED else _BETA_GENERAL_POW


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def window(size: int, channels: int) -> tuple[int, int, int]:
    """(SIZE, BEFORE, AFTER) for the kernels: the window's reach before and after its channel,
    each at most C, and its length. Clipped to [0, C), a reach of C or more is the same window as
    any longer one, so a size far above C (2**31 is a valid size) loops over at most 2C + 1 taps
    and keeps its constexprs in int32; for size <= 2C + 1 they are size, size // 2, (size - 1) // 2.
    alpha / size keeps the true size."""
    before, after = min(size // 2, channels), min((size - 1) // 2, channels)
    return before + after + 1, before, after


def nan_scale(dtype: torch.dtype, beta: float) -> float:
    """For beta > 1, the |s| from which torch's LRN backward is NaN: where its beta * s^(beta-1)
    overflows, min((max / beta)^(1/(beta-1)), max), max the largest finite value of the input's
    dtype (csrc/op_helpers.h lrn_nan_scale)."""
    largest = torch.finfo(dtype).max
    if beta <= 1:
        return largest
    try:
        return min((largest / beta) ** (1.0 / (beta - 1.0)), largest)
    except OverflowError:  # beta just above 1: the power is past any float
        return largest


def _launch(kernel, tensors, x, size, alpha, beta, k, reverse=False, t_kernel=False, **constants):
    """One program per BLOCK columns of x's [outer, C, inner] view. reverse: the kernel also sums
    reverse windows (AFTER); t_kernel: it also takes nan_scale."""
    outer, c, s, outer_stride, channel_stride, lane_stride = _geometry(x)
    n_cols = outer * s
    span, before, after = window(size, c)
    if reverse:
        constants["AFTER"] = after
    scalars = (float(alpha) / size, float(beta), float(k)) + ((nan_scale(x.dtype, float(beta)),) if t_kernel else ())
    kernel[(triton.cdiv(n_cols, _BLOCK),)](
        *tensors, n_cols, s, c, outer_stride, channel_stride, lane_stride, *scalars,
        SIZE=span, BEFORE=before, BETA_KIND=_beta_kind(float(beta)),
        ACC=_acc_dtype(x.dtype), BLOCK=_BLOCK, num_warps=_NUM_WARPS, **constants)


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """y = x * (k + alpha/size * window sum of x^2)^-beta; same layout as x."""
    y = torch.empty_like(x)
    if x.numel() > 0:
        _launch(_lrn_forward_kernel, (x, y), x, size, alpha, beta, k)
    return y


def lrn_backward(grad_output: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float, relu: bool = False) -> torch.Tensor:
    """dx of lrn_forward, recomputing s from x; grad_output in the same layout as x. relu: the
    gradient with respect to x of the LRN of relu(x)."""
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    # The same strides, but where a dim of size 1 never steps.
    if grad_output.shape != x.shape or any(a != b for a, b, n in zip(grad_output.stride(), x.stride(), x.shape)
                                           if n > 1):
        raise ValueError("lrn_backward: grad_output must have x's shape and layout")
    # t in the accumulation type, for the second kernel's reverse-window sums; freed on return.
    t = torch.empty_like(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _launch(_lrn_t_kernel, (grad_output, x, t), x, size, alpha, beta, k, t_kernel=True, RELU=relu)
    _launch(_lrn_dx_kernel, (grad_output, x, t, dx), x, size, alpha, beta, k, reverse=True, RELU=relu)
    return dx
