"""AlexNet's ReLU -> LRN -> max-pool in Triton: y = max_pool2d(local_response_norm(relu(x))), with
the semantics of torch's three ops (the LRN's alpha/size convention, max-pool's -inf padding,
ceil_mode, NaN propagation and first-maximum ties).

Forward, one kernel: one output element per lane. At each position of its window the lane
computes relu -> LRN of its channel from that column's `size` channel neighbours (the LRN
kernels' helpers, with relu applied on load), rounds it to x's dtype as torch stores the LRN
output its max-pool compares, and keeps the running maximum (the max-pool kernel's rule). Neither
relu(x) nor the LRN output is written; what is kept for backward is x and the argmax as a uint8
offset inside the window (int32 beyond 256 elements).

Backward: the max-pool backward gathers grad_output into a temporary of x's size (adding
overlapping windows in torch's order), then the LRN backward runs on it with relu(x) recomputed
on load and the ReLU's mask applied to dx.
"""
import triton
import triton.language as tl
import torch

from . import lrn, max_pool2d

_BLOCK = 256
_NUM_WARPS = 4


@triton.jit
def _relu_lrn_at(x_ptr, column, c, real, C, x_sc, alpha_over_size, beta, k, SIZE: tl.constexpr,
                 BEFORE: tl.constexpr, BETA_KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # LRN of relu(x) for channel c of the column starting at `column`, rounded to x's dtype.
    window_sum = lrn._window_sum(x_ptr, column, real, c - BEFORE, C, x_sc, SIZE, True, ACC, BLOCK, True)
    x = lrn._relu(tl.load(x_ptr + lrn._row_offsets(column, c, x_sc), mask=real, other=0.0).to(ACC), True)
    y = x * lrn._inverse_power(lrn._scale(window_sum, alpha_over_size, k), beta, BETA_KIND)
    return y.to(x_ptr.dtype.element_ty).to(ACC)


@triton.jit
def _relu_lrn_visit(x_ptr, image, c, h0, w0, kh, kw, C, H, W, x_sc, x_sh, x_sw, mask, best, best_offset,
                    alpha_over_size, beta, k, SIZE: tl.constexpr, BEFORE: tl.constexpr, BETA_KIND: tl.constexpr,
                    KW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    ih, iw, real = max_pool2d._position(h0, w0, kh, kw, H, W, mask, DH, DW)
    v = _relu_lrn_at(x_ptr, image + ih * x_sh + iw * x_sw, c, real, C, x_sc, alpha_over_size, beta, k, SIZE,
                     BEFORE, BETA_KIND, ACC, BLOCK)
    return max_pool2d._take(v, real, kh, kw, best, best_offset, KW)


@triton.jit
def _relu_lrn_max_pool2d_forward_kernel(x_ptr, out_ptr, offset_ptr, total, C, H, W, OH, OW,
                                        x_sn, x_sc, x_sh, x_sw, o_sn, o_sc, o_sh, o_sw,
                                        alpha_over_size: tl.float64, beta: tl.float64, k: tl.float64,
                                        SIZE: tl.constexpr, BEFORE: tl.constexpr, BETA_KIND: tl.constexpr,
                                        KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                                        PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                                        UNROLL: tl.constexpr, CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr,
                                        BLOCK: tl.constexpr):
    # int64 throughout: N*C*H*W passes 2**31 for large activations.
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, oh, ow = max_pool2d._split_index(idx, C, OH, OW, CHANNELS_LAST)
    image = n * x_sn
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    # tl.full rather than .to: under the interpreter a float argument arrives as a Python float.
    alpha_over_size_acc = tl.full((), alpha_over_size, ACC)
    beta_acc = tl.full((), beta, ACC)
    k_acc = tl.full((), k, ACC)
    best = tl.full([BLOCK], float("-inf"), ACC)
    best_offset = (max_pool2d._first_real(h0, DH) * KW + max_pool2d._first_real(w0, DW)).to(tl.int32)
    if UNROLL:
        for kh in tl.static_range(KH):
            for kw in tl.static_range(KW):
                best, best_offset = _relu_lrn_visit(x_ptr, image, c, h0, w0, kh, kw, C, H, W, x_sc, x_sh, x_sw, mask,
                                                    best, best_offset, alpha_over_size_acc, beta_acc, k_acc, SIZE,
                                                    BEFORE, BETA_KIND, KW, DH, DW, ACC, BLOCK)
    else:
        for kh in range(KH):
            for kw in range(KW):
                best, best_offset = _relu_lrn_visit(x_ptr, image, c, h0, w0, kh, kw, C, H, W, x_sc, x_sh, x_sw, mask,
                                                    best, best_offset, alpha_over_size_acc, beta_acc, k_acc, SIZE,
                                                    BEFORE, BETA_KIND, KW, DH, DW, ACC, BLOCK)
    out = n * o_sn + c * o_sc + oh * o_sh + ow * o_sw
    tl.store(out_ptr + out, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(offset_ptr + out, best_offset.to(offset_ptr.dtype.element_ty), mask=mask)


def relu_lrn_max_pool2d_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, kernel_size,
                                stride, padding, dilation, out_hw, layout):
    """(out, offsets) of the [N, C, H, W] x (contiguous or channels_last), both [N, C, OH, OW] in
    x's memory format `layout` (the op's choice, as max_pool2d_forward)."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    layout = max_pool2d._checked_layout(x, layout)
    out = torch.empty((n, c, oh, ow), dtype=x.dtype, device=x.device, memory_format=layout)
    offsets = torch.empty((n, c, oh, ow), dtype=max_pool2d._offset_dtype(kernel_size), device=x.device,
                          memory_format=layout)
    total = out.numel()
    if total == 0:
        return out, offsets
    span, before, _ = lrn.window(size, c)
    _relu_lrn_max_pool2d_forward_kernel[(triton.cdiv(total, _BLOCK),)](
        x, out, offsets, total, c, h, w, oh, ow, *x.stride(), *out.stride(),
        float(alpha) / size, float(beta), float(k), SIZE=span, BEFORE=before,
        BETA_KIND=lrn._beta_kind(float(beta)),
        **max_pool2d._window_constants(kernel_size, stride, padding, dilation),
        UNROLL=kernel_size[0] * kernel_size[1] <= max_pool2d._MAX_UNROLLED,
        CHANNELS_LAST=layout == torch.channels_last, ACC=max_pool2d._accumulator(x.dtype), BLOCK=_BLOCK,
        num_warps=_NUM_WARPS)
    return out, offsets


def relu_lrn_max_pool2d_backward(grad_output: torch.Tensor, offsets: torch.Tensor, x: torch.Tensor, size: int,
                                 alpha: float, beta: float, k: float, kernel_size, stride, padding,
                                 dilation, layout) -> torch.Tensor:
    """dx of relu_lrn_max_pool2d_forward; grad_output, offsets and x in one memory format `layout`."""
    max_pool2d._checked_layout(x, layout)
    grad_lrn = max_pool2d.max_pool2d_backward(grad_output, offsets, tuple(x.shape[2:]), kernel_size, stride,
                                              padding, dilation, layout)
    return lrn.lrn_backward(grad_lrn, x, size, alpha, beta, k, relu=True)
