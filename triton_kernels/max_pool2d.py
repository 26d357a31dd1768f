"""2-d max pooling in Triton, with torch.nn.functional.max_pool2d's semantics to the element.

Forward: one output element per lane. Its window is visited row by row; a value replaces the
running maximum when it is greater or NaN (so the first of equal maxima wins, and the last NaN);
padding never wins; the initial argmax is the window's first non-padded position, so an all -inf
window points at it.

What is kept for backward is the argmax as an offset inside its window, kh * kernel_w + kw: uint8
for windows of up to 256 elements (int32 beyond), never the input nor int64 indices.

Backward: a gather, no atomics. One input element per lane sums, in fp32 (fp64 for fp64), the
gradients of the output windows that cover it and whose offset points at it, in order of output
row then column, as torch's kernels add them: deterministic, and bit-identical to torch in fp32.

Both kernels address memory through the tensors' strides, so contiguous and channels_last go
through the same code; the flat lane index follows the written tensor's memory order so that
stores (and, mostly, loads) are coalesced.
"""
import triton
import triton.language as tl
import torch

_BLOCK = 256
_NUM_WARPS = 4
# Windows (or covering output ranges) up to this many positions are unrolled; larger ones loop,
# keeping the code size bounded.
_MAX_UNROLLED = 64


@triton.jit
def _split_index(idx, C, H, W, CHANNELS_LAST: tl.constexpr):
    # (n, c, h, w) of the flat index idx of an [N, C, H, W] tensor, in its memory order.
    if CHANNELS_LAST:
        c = idx % C
        rest = idx // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = idx % W
        rest = idx // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


@triton.jit
def _first_real(start, DILATION: tl.constexpr):
    # First window position at or past 0: ceil(-start / dilation) for a start in the padding.
    # (The numerator is only used where it is positive: integer division truncates on GPU.)
    return tl.where(start < 0, (DILATION - 1 - start) // DILATION, 0)


@triton.jit
def _position(h0, w0, kh, kw, H, W, mask, DH: tl.constexpr, DW: tl.constexpr):
    # Input row and column of window position (kh, kw), and whether it is a real (unpadded) one.
    ih = h0 + kh * DH
    iw = w0 + kw * DW
    return ih, iw, mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def _take(v, real, kh, kw, best, best_offset, KW: tl.constexpr):
    # The running maximum takes v when it is greater or NaN; padded and masked-off lanes never win.
    take = real & ((v > best) | (v != v))
    best = tl.where(take, v, best)
    best_offset = tl.where(take, kh * KW + kw, best_offset)
    return best, best_offset


@triton.jit
def _visit(x_ptr, plane, h0, w0, kh, kw, H, W, x_sh, x_sw, mask, best, best_offset,
           KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr):
    ih, iw, real = _position(h0, w0, kh, kw, H, W, mask, DH, DW)
    # Compared in the accumulation type (exact for a maximum): the interpreter cannot build bf16
    # constants.
    v = tl.load(x_ptr + plane + ih * x_sh + iw * x_sw, mask=real, other=0).to(best.dtype)
    return _take(v, real, kh, kw, best, best_offset, KW)


@triton.jit
def _max_pool2d_forward_kernel(x_ptr, out_ptr, offset_ptr, total, C, H, W, OH, OW,
                               x_sn, x_sc, x_sh, x_sw, o_sn, o_sc, o_sh, o_sw,
                               KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                               PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                               UNROLL: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr,
                               BLOCK: tl.constexpr):
    # int64 throughout: N*C*H*W passes 2**31 for large activations.
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, oh, ow = _split_index(idx, C, OH, OW, CHANNELS_LAST)
    plane = n * x_sn + c * x_sc
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    best = tl.full([BLOCK], float("-inf"), ACC)
    best_offset = (_first_real(h0, DH) * KW + _first_real(w0, DW)).to(tl.int32)
    if UNROLL:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                best, best_offset = _visit(x_ptr, plane, h0, w0, kh, kw, H, W, x_sh, x_sw, mask, best,
                                           best_offset, KW, DH, DW)
    else:
        for kh in range(KH):
            for kw in range(KW):
                best, best_offset = _visit(x_ptr, plane, h0, w0, kh, kw, H, W, x_sh, x_sw, mask, best,
                                           best_offset, KW, DH, DW)
    out = n * o_sn + c * o_sc + oh * o_sh + ow * o_sw
    tl.store(out_ptr + out, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(offset_ptr + out, best_offset.to(offset_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _covering(i, PAD: tl.constexpr, K: tl.constexpr, S: tl.constexpr, D: tl.constexpr, out_size):
    # Output rows (or columns) whose window covers input row i: [first, last], possibly empty.
    reach = i + PAD - (K - 1) * D  # o * S >= reach
    first = tl.where(reach <= 0, 0, (reach + S - 1) // S)
    last = tl.minimum((i + PAD) // S, out_size - 1)  # o * S <= i + PAD
    return first, last


@triton.jit
def _gather(go_ptr, offset_ptr, go_plane, off_plane, ih, iw, a, b, oh_first, oh_last, ow_first, ow_last,
            g_sh, g_sw, f_sh, f_sw, mask, acc,
            KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
            DH: tl.constexpr, DW: tl.constexpr):
    # Adds the gradient of output (oh_first + a, ow_first + b) if its window's argmax is (ih, iw).
    oh = oh_first + a
    ow = ow_first + b
    dh = ih + PH - oh * SH  # >= 0 wherever oh <= oh_last
    dw = iw + PW - ow * SW
    covers = mask & (oh <= oh_last) & (ow <= ow_last) & (dh % DH == 0) & (dw % DW == 0)
    offset = tl.load(offset_ptr + off_plane + oh * f_sh + ow * f_sw, mask=covers, other=0).to(tl.int32)
    hit = covers & (offset == (dh // DH) * KW + dw // DW)
    g = tl.load(go_ptr + go_plane + oh * g_sh + ow * g_sw, mask=hit, other=0.0).to(acc.dtype)
    # Adding +0 where there is no hit leaves the sum bit for bit as skipping would (it starts at +0).
    return acc + tl.where(hit, g, 0.0)


@triton.jit
def _max_pool2d_backward_kernel(go_ptr, offset_ptr, gi_ptr, total, C, H, W, OH, OW,
                                g_sn, g_sc, g_sh, g_sw, f_sn, f_sc, f_sh, f_sw, i_sn, i_sc, i_sh, i_sw,
                                KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                                PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                                MAX_OH: tl.constexpr, MAX_OW: tl.constexpr, UNROLL: tl.constexpr,
                                CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, ih, iw = _split_index(idx, C, H, W, CHANNELS_LAST)
    oh_first, oh_last = _covering(ih, PH, KH, SH, DH, OH)
    ow_first, ow_last = _covering(iw, PW, KW, SW, DW, OW)
    go_plane = n * g_sn + c * g_sc
    off_plane = n * f_sn + c * f_sc
    acc = tl.zeros([BLOCK], dtype=ACC)
    # At most MAX_OH x MAX_OW outputs cover an input element; rows outer, columns inner, ascending.
    if UNROLL:
        for a in tl.static_range(MAX_OH):
            for b in tl.static_range(MAX_OW):
                acc = _gather(go_ptr, offset_ptr, go_plane, off_plane, ih, iw, a, b, oh_first, oh_last, ow_first,
                              ow_last, g_sh, g_sw, f_sh, f_sw, mask, acc, KW, SH, SW, PH, PW, DH, DW)
    else:
        for a in range(MAX_OH):
            for b in range(MAX_OW):
                acc = _gather(go_ptr, offset_ptr, go_plane, off_plane, ih, iw, a, b, oh_first, oh_last, ow_first,
                              ow_last, g_sh, g_sw, f_sh, f_sw, mask, acc, KW, SH, SW, PH, PW, DH, DW)
    tl.store(gi_ptr + n * i_sn + c * i_sc + ih * i_sh + iw * i_sw, acc.to(gi_ptr.dtype.element_ty), mask=mask)


def _checked_layout(t: torch.Tensor, layout: torch.memory_format) -> torch.memory_format:
    """`layout`, the one the op chose (its rule: cnnfast/ops/_checks.py output_memory_format), after
    checking that t lies in it. Never re-read from t: a tensor can read as both layouts (one
    channel, a 1x1 plane), and only the op knows which one it returns."""
    if not t.is_contiguous(memory_format=layout):
        raise ValueError(f"max_pool2d: tensors must be {layout}-contiguous")
    return layout


def _offset_dtype(kernel_size) -> torch.dtype:
    return torch.uint8 if kernel_size[0] * kernel_size[1] <= 256 else torch.int32


def _accumulator(dtype: torch.dtype):
    """fp64 for fp64 tensors, fp32 otherwise (the C++ kernels' acc_type)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _window_constants(kernel_size, stride, padding, dilation) -> dict:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    return dict(KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw, DH=dh, DW=dw)


def max_pool2d_forward(x: torch.Tensor, kernel_size, stride, padding, dilation, out_hw, layout):
    """(out, offsets) of the [N, C, H, W] x, both [N, C, OH, OW] in x's memory format `layout`."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    layout = _checked_layout(x, layout)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=layout)
    offsets = torch.empty((n, c, oh, ow), dtype=_offset_dtype(kernel_size), device=x.device, memory_format=layout)
    total = out.numel()
    if total == 0:
        return out, offsets
    grid = (triton.cdiv(total, _BLOCK),)
    _max_pool2d_forward_kernel[grid](
        x, out, offsets, total, c, h, w, oh, ow, *x.stride(), *out.stride(),
        **_window_constants(kernel_size, stride, padding, dilation),
        UNROLL=kernel_size[0] * kernel_size[1] <= _MAX_UNROLLED,
        CHANNELS_LAST=layout == torch.channels_last, ACC=_accumulator(x.dtype), BLOCK=_BLOCK,
        num_warps=_NUM_WARPS)
    return out, offsets


def max_pool2d_backward(grad_output: torch.Tensor, offsets: torch.Tensor, input_hw, kernel_size, stride, padding,
                        dilation, layout) -> torch.Tensor:
    """grad_input [N, C, H, W] in grad_output's memory format `layout` and dtype."""
    n, c, oh, ow = grad_output.shape
    h, w = input_hw
    layout = _checked_layout(grad_output, layout)
    grad_input = torch.empty((n, c, h, w), dtype=grad_output.dtype, device=grad_output.device, memory_format=layout)
    total = grad_input.numel()
    if total == 0:
        return grad_input
    if oh == 0 or ow == 0:
        return grad_input.zero_()
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, stride, dilation
    # Outputs covering one input row: o * s in an interval of length (k - 1) * d.
    max_oh = (kh - 1) * dh // sh + 1
    max_ow = (kw - 1) * dw // sw + 1
    grid = (triton.cdiv(total, _BLOCK),)
    _max_pool2d_backward_kernel[grid](
        grad_output, offsets, grad_input, total, c, h, w, oh, ow,
        *grad_output.stride(), *offsets.stride(), *grad_input.stride(),
        **_window_constants(kernel_size, stride, padding, dilation),
        MAX_OH=max_oh, MAX_OW=max_ow, UNROLL=max_oh * max_ow <= _MAX_UNROLLED,
        CHANNELS_LAST=layout == torch.channels_last,
        ACC=_accumulator(grad_output.dtype),
        BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return grad_input
