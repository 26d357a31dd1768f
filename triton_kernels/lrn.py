"""Cross-channel local response normalisation in Triton (torch.nn.functional.local_response_norm).

    s_c  = k + alpha/size * sum_{c' in [c - size//2, c + (size-1)//2] ∩ [0, C)} x_{c'}^2
    y_c  = x_c * s_c^-beta
    dx_j = dy_j * s_j^-beta - 2*alpha*beta/size * x_j * sum_{c: j in window(c)} dy_c x_c s_c^(-beta-1)

The tensor is viewed as [N, C, S] (S = product of the trailing dims). A "column" is the C values of
one (n, spatial position); each program owns BLOCK columns and walks their channels once with a
running window sum (add the square entering the window, subtract the one leaving it), so the work
is O(C) per column whatever the size. Accumulation is fp32 for fp16/bf16/fp32 and fp64 for fp64.

Only x is kept for backward: s is recomputed from it, which reads less memory than keeping y.
The backward has no register arrays to hold a ring of past values, so it runs three running
window sums that follow the same channel sequence at different lags and recomputes from x and dy
what the C++ kernels keep in a ring (see _lrn_backward_kernel).
"""
import triton
import triton.language as tl
import torch

# Columns per program; 4 warps, two columns per thread.
_BLOCK = 256
_NUM_WARPS = 4

# Which s^-beta to compute (the Power types of csrc/common/lrn.h): the general pow costs far
# more than these kernels' memory traffic, so AlexNet's 0.75 and 0.5 go through sqrt.
_BETA_GENERAL = 0
_BETA_THREE_QUARTERS = 1
_BETA_HALF = 2


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
    else:
        # libdevice pow does not run under the interpreter; exp2/log2 do, natively as well.
        p = tl.exp2(-beta * tl.log2(s))
    return p


@triton.jit
def _scale(window_sum, alpha_over_size, k):
    # Rounding in the running sum can leave a tiny negative value where the true sum is 0.
    return k + alpha_over_size * tl.where(window_sum > 0, window_sum, 0.0)


@triton.jit
def _row_offsets(base, channel, channel_stride):
    # int64: channel * channel_stride exceeds 2**31 for a sample of more than 2**31 elements.
    # (tl.cast, not .to: under the interpreter a loop index is a Python int.)
    return base + tl.cast(channel, tl.int64) * channel_stride


@triton.jit
def _square(x_ptr, base, mask, channel, channel_stride, ACC: tl.constexpr):
    v = tl.load(x_ptr + _row_offsets(base, channel, channel_stride), mask=mask, other=0.0).to(ACC)
    return v * v


@triton.jit
def _start_window(x_ptr, base, mask, start_end, channel_stride, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # The window sum of channel -1: channels [0, min(after, C)).
    window_sum = tl.zeros([BLOCK], dtype=ACC)
    for c in range(0, start_end):
        window_sum += _square(x_ptr, base, mask, c, channel_stride, ACC)
    return window_sum


@triton.jit
def _slide(x_ptr, base, mask, position, C, channel_stride, window_sum,
           BEFORE: tl.constexpr, AFTER: tl.constexpr):
    # Moves window_sum from position - 1 to position (>= 0). A masked-out square is +0, which
    # leaves the sum bit for bit as the C++ kernels' conditional add / subtract does.
    entering = position + AFTER
    leaving = position - BEFORE - 1
    window_sum += _square(x_ptr, base, mask & (entering < C), entering, channel_stride, window_sum.dtype)
    window_sum -= _square(x_ptr, base, mask & (leaving >= 0), leaving, channel_stride, window_sum.dtype)
    return window_sum


@triton.jit
def _column_terms(x_ptr, dy_ptr, base, mask, channel, channel_stride, window_sum, alpha_over_size, k, beta,
                  BETA_KIND: tl.constexpr):
    # x, dy, s and s^-beta of one channel of the block's columns.
    offsets = _row_offsets(base, channel, channel_stride)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(window_sum.dtype)
    dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(window_sum.dtype)
    scale = _scale(window_sum, alpha_over_size, k)
    power = _inverse_power(scale, beta, BETA_KIND)
    return x, dy, scale, power


@triton.jit
def _t_term(x_ptr, dy_ptr, base, mask, channel, channel_stride, window_sum, alpha_over_size, k, beta,
            BETA_KIND: tl.constexpr):
    # t_c = dy_c x_c s_c^(-beta-1), in the C++ kernels' order of operations.
    x, dy, scale, power = _column_terms(x_ptr, dy_ptr, base, mask, channel, channel_stride, window_sum,
                                        alpha_over_size, k, beta, BETA_KIND)
    return _div(dy * x * power, scale)


@triton.jit
def _write_dx(dy_ptr, x_ptr, dx_ptr, base, mask, j, C, channel_stride, out_sum, t_sum, coefficient,
              alpha_over_size, k, beta, BEFORE: tl.constexpr, AFTER: tl.constexpr, BETA_KIND: tl.constexpr):
    # dx_j = dy_j s_j^-beta - 2 alpha beta / size * x_j * t_sum; returns the window sum slid to j.
    out_sum = _slide(x_ptr, base, mask, j, C, channel_stride, out_sum, BEFORE, AFTER)
    x, dy, scale, power = _column_terms(x_ptr, dy_ptr, base, mask, j, channel_stride, out_sum,
                                        alpha_over_size, k, beta, BETA_KIND)
    dx = dy * power - coefficient * x * t_sum
    tl.store(dx_ptr + _row_offsets(base, j, channel_stride), dx.to(dx_ptr.dtype.element_ty), mask=mask)
    return out_sum


@triton.jit
def _column_bases(n_cols, S, batch_stride, lane_stride, BLOCK: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    n = cols // S
    lane = cols - n * S
    return n * batch_stride + lane * lane_stride, mask


@triton.jit
def _lrn_forward_kernel(x_ptr, y_ptr, n_cols, S, C, batch_stride, channel_stride, lane_stride, start_end,
                        alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64,
                        BEFORE: tl.constexpr, AFTER: tl.constexpr, BETA_KIND: tl.constexpr,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    base, mask = _column_bases(n_cols, S, batch_stride, lane_stride, BLOCK)
    # tl.full rather than .to: under the interpreter a float argument arrives as a Python float.
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    window_sum = _start_window(x_ptr, base, mask, start_end, channel_stride, ACC, BLOCK)
    for c in range(0, C):
        window_sum = _slide(x_ptr, base, mask, c, C, channel_stride, window_sum, BEFORE, AFTER)
        offsets = _row_offsets(base, c, channel_stride)
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(ACC)
        power = _inverse_power(_scale(window_sum, alpha_over_size_acc, k_acc), beta_acc, BETA_KIND)
        tl.store(y_ptr + offsets, (x * power).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_kernel(dy_ptr, x_ptr, dx_ptr, n_cols, S, C, batch_stride, channel_stride, lane_stride,
                         start_end, tail_start,
                         alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64,
                         SIZE: tl.constexpr, BEFORE: tl.constexpr, AFTER: tl.constexpr,
                         BETA_KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # Step c adds t_c to the reverse window sum t_sum and then writes dx_j for j = c - before,
    # whose reverse window [j - after, j + before] ends at c; t_{c-size} leaves t_sum first.
    # The C++ kernels keep t and s^-beta of the last min(size, C) channels in a ring; here each of
    # the three channels a step touches (c, c - size, c - before) has its own running window sum,
    # slid in step with c, and the rows are read again (they are still in cache). The lagging sums
    # go through the same additions as the leading one, so a recomputed t_{c-size} is the value
    # that was added.
    base, mask = _column_bases(n_cols, S, batch_stride, lane_stride, BLOCK)
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    coefficient = 2.0 * alpha_over_size_acc * beta_acc
    lead_sum = _start_window(x_ptr, base, mask, start_end, channel_stride, ACC, BLOCK)
    drop_sum = lead_sum
    out_sum = lead_sum
    t_sum = tl.zeros([BLOCK], dtype=ACC)
    # Steps c < C: t_c enters. Steps c >= C only drop and write; those below `before` would write
    # nothing (j < 0) and drop nothing (c - size < 0), so the second loop starts at
    # tail_start = max(C, before): at most 2C steps whatever the size.
    for c in range(0, C):
        dropped = c - SIZE
        if dropped >= 0:
            drop_sum = _slide(x_ptr, base, mask, dropped, C, channel_stride, drop_sum, BEFORE, AFTER)
            t_sum -= _t_term(x_ptr, dy_ptr, base, mask, dropped, channel_stride, drop_sum,
                             alpha_over_size_acc, k_acc, beta_acc, BETA_KIND)
        lead_sum = _slide(x_ptr, base, mask, c, C, channel_stride, lead_sum, BEFORE, AFTER)
        t_sum += _t_term(x_ptr, dy_ptr, base, mask, c, channel_stride, lead_sum,
                         alpha_over_size_acc, k_acc, beta_acc, BETA_KIND)
        j = c - BEFORE
        if j >= 0:
            out_sum = _write_dx(dy_ptr, x_ptr, dx_ptr, base, mask, j, C, channel_stride, out_sum, t_sum,
                                coefficient, alpha_over_size_acc, k_acc, beta_acc, BEFORE, AFTER, BETA_KIND)
    for c in range(tail_start, C + BEFORE):
        dropped = c - SIZE
        if dropped >= 0:
            drop_sum = _slide(x_ptr, base, mask, dropped, C, channel_stride, drop_sum, BEFORE, AFTER)
            t_sum -= _t_term(x_ptr, dy_ptr, base, mask, dropped, channel_stride, drop_sum,
                             alpha_over_size_acc, k_acc, beta_acc, BETA_KIND)
        out_sum = _write_dx(dy_ptr, x_ptr, dx_ptr, base, mask, c - BEFORE, C, channel_stride, out_sum, t_sum,
                            coefficient, alpha_over_size_acc, k_acc, beta_acc, BEFORE, AFTER, BETA_KIND)


def _geometry(x: torch.Tensor):
    """(N, C, S, batch, channel and lane strides) of the [N, C, S] view of x."""
    n, c = x.shape[0], x.shape[1]
    s = x.numel() // (n * c)
    if x.is_contiguous():
        return n, c, s, c * s, s, 1
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return n, c, s, c * s, 1, c
    raise ValueError("lrn: x must be contiguous or (4-d) channels_last-contiguous")


def _beta_kind(beta: float) -> int:
    if beta == 0.75:
        return _BETA_THREE_QUARTERS
    if beta == 0.5:
        return _BETA_HALF
    return _BETA_GENERAL


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def lrn_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """y = x * (k + alpha/size * window sum of x^2)^-beta; same layout as x."""
    y = torch.empty_like(x)
    if x.numel() == 0:
        return y
    n, c, s, batch_stride, channel_stride, lane_stride = _geometry(x)
    before, after = size // 2, (size - 1) // 2
    n_cols = n * s
    grid = (triton.cdiv(n_cols, _BLOCK),)
    _lrn_forward_kernel[grid](
        x, y, n_cols, s, c, batch_stride, channel_stride, lane_stride, min(after, c),
        float(alpha) / size, float(beta), float(k),
        BEFORE=before, AFTER=after, BETA_KIND=_beta_kind(float(beta)), ACC=_acc_dtype(x.dtype),
        BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return y


def lrn_backward(grad_output: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float,
                 k: float) -> torch.Tensor:
    """dx of lrn_forward, recomputing s from x; grad_output in the same layout as x."""
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx
    n, c, s, batch_stride, channel_stride, lane_stride = _geometry(x)
    if grad_output.shape != x.shape or _geometry(grad_output) != (n, c, s, batch_stride, channel_stride, lane_stride):
        raise ValueError("lrn_backward: grad_output must have x's shape and layout")
    before, after = size // 2, (size - 1) // 2
    n_cols = n * s
    grid = (triton.cdiv(n_cols, _BLOCK),)
    _lrn_backward_kernel[grid](
        grad_output, x, dx, n_cols, s, c, batch_stride, channel_stride, lane_stride, min(after, c), max(c, before),
        float(alpha) / size, float(beta), float(k),
        SIZE=size, BEFORE=before, AFTER=after, BETA_KIND=_beta_kind(float(beta)), ACC=_acc_dtype(x.dtype),
        BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return dx
