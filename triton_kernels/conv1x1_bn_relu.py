"""1x1 convolution with BatchNorm -> ReLU fused into it, in Triton: the three GEMMs of training.

A 1x1 convolution (stride 1, no padding, one group) is a GEMM over channels. With the BN-ReLU
of csrc/common/batch_norm.h in front of it,

    z[n, i, s] = x[n, i, s] * scale[i] + shift[i]          (in the accumulation type)
    r[n, i, s] = relu(z)                                    (0 where z < 0; a NaN stays NaN)
    out[n, o, s]    = bias[o] + sum_i weight[o, i] * r[n, i, s]
    grad_weight[o, i] = sum_{n, s} grad_out[n, o, s] * r[n, i, s]
    dr[n, i, s]     = sum_o weight[o, i] * grad_out[n, o, s]
    dz              = 0 where z <= 0, else dr              (a NaN z passes dr, as in torch)
    sum_dz[i]       = sum_{n, s} dz,   sum_dz_xmu[i] = sum_{n, s} dz * (x - mean[i])

and r is never written to memory: the forward and the weight gradient recompute it from each x
tile in registers as the tile is loaded (a prologue), and the input gradient recomputes z in its
epilogue to apply the mask and add up BN's two backward sums.

Tensors are [N, C, H, W] with H and W merged into one spatial index s (stride_h == W * stride_w,
or H == 1 or W == 1), addressed through (batch, channel, spatial) strides: contiguous,
channels_last and channel slices of a larger buffer (a DenseNet block's) go through the same code.
The GEMMs' position dimension is the flat index p = n * S + s, so that small feature maps (7x7,
or 1x1) still fill whole tiles; each tile splits p into (n, s) once, in int32 (the launchers check
that N * S fits), and forms int64 offsets from it.

Accumulation is fp32 (fp64 for fp64 inputs). The dots take x's dtype: r is rounded to fp16/bf16
for 16-bit inputs (as a 16-bit torch conv sees its 16-bit input), and fp32 dots are full precision
(input_precision="ieee", never tf32), as the results are compared with torch's fp32 conv.

The kernels are compiled with enable_fp_fusion=False, so z = x * scale + shift is rounded after the
multiply exactly as written, and the mask and ReLU see the same z as every other BN-ReLU kernel and
the plain-torch reference (a fused multiply-add could move a z within an ulp of 0 across it).

Deterministic, no float atomics: the weight gradient splits its reduction over positions into a
fixed number of ranges that depends on the shape only, writes one fp32/fp64 partial per range and
adds the partials in a fixed order afterwards; the input gradient writes BN's per-channel sums as
one partial per position tile and adds them up the same way.
"""
import triton
import triton.language as tl
import torch

# Tiles for sm_90 (BLOCK_M x BLOCK_N output tile, BLOCK_K-deep steps), chosen so that ptxas
# spills no register in any of the three kernels (checked for contiguous and channels_last
# strides). 16-bit inputs go to the tensor cores (wgmma): 64 x 128 with 32-deep steps; with 4 warps
# the prologue's fp32 tile on top of the accumulator spilled, 8 warps do not. A 64-row tile wastes
# nothing on the 64- and 128-channel outputs of ResNet and DenseNet bottlenecks.
_TILES_16BIT = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, num_warps=8, num_stages=3)
# Full-precision fp32 dots run on the FMA units (fp64 on the DMMA units), which hold a whole
# BLOCK_K slice of both operands in registers: 16-deep steps (the least tl.dot takes) and a
# 64 x 64 tile; 32-deep steps spilled, and so did the forward's prologue with a third pipeline
# stage (12-20 bytes, Triton 3.6; two stages, 128 registers, none), on units that compute rather
# than wait for memory.
_TILES_FULL = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=2)

# Weight gradient: its output (Co x Ci) has few tiles and its reduction (N * H * W positions) is
# long, so the reduction is split into ranges, each a program. Enough programs for a few waves on
# an H100's 132 SMs; a constant rather than the device's SM count, so that the split, hence the
# order of the additions and the bits of the result, is the same on every GPU. A range is at least
# this many BLOCK_K steps, so that a small reduction is not split into partials that each add up
# almost nothing.
_WEIGHT_GRAD_TARGET_PROGRAMS = 512
_WEIGHT_GRAD_MIN_STEPS_PER_RANGE = 8

# Positions (N * H * W) per channel: the kernels index them in int32, up to a tile past the end.
_MAX_POSITIONS = 2**31 - 1 - 1024

# Compile options of every launch: see the module docstring (ignored by the interpreter).
_COMPILE_OPTIONS = dict(enable_fp_fusion=False)

# Whether @triton.jit made the kernels interpreted (it decides when this module is imported). The
# interpreter keeps bfloat16 as raw uint16 bits and its tl.dot multiplies those bits
# (triton-lang/triton#11584), so there bf16 operands go to the dot as fp32: the same products
# (a bf16 x bf16 product is exact in fp32) and the same fp32 accumulation.
_INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _positions(start, P, S, BLOCK: tl.constexpr):
    # (n, s) of the positions p = n * S + s = start + [0, BLOCK), and which are real; the one
    # integer division per position is shared by every tensor the tile addresses.
    p = start + tl.arange(0, BLOCK)
    n = p // S
    s = p - n * S
    # int64: n * batch_stride exceeds 2**31 in a tensor of more than 2**31 elements, and so can
    # s * spatial_stride in a channels_last one.
    return n.to(tl.int64), s.to(tl.int64), p < P


@triton.jit
def _bn_relu(x, scale, shift, mask):
    # r = relu(x * scale + shift) in the accumulation type, as csrc/common/batch_norm.h: 0 where
    # z < 0 (so a NaN stays NaN). Zero outside the tensor: a padded position or channel must add
    # nothing to a dot even when shift there is large, inf or NaN.
    z = x * scale + shift
    r = tl.where(z < 0, 0.0, z)
    return tl.where(mask, r, 0.0)


@triton.jit
def _channel_tile_first(channels, BLOCK_M: tl.constexpr):
    # This program's tile of BLOCK_M channels (indices and mask) and its position tile. The
    # channel tile varies fastest between programs, so the programs that read the same position
    # tile run together and all but the first find it in L2.
    pid = tl.program_id(0)
    tiles = tl.cdiv(channels, BLOCK_M)
    c = (pid % tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
    return c, c < channels, pid // tiles


@triton.jit
def _forward_kernel(x_ptr, w_ptr, bias_ptr, scale_ptr, shift_ptr, out_ptr,
                    P, S, Ci, Co,
                    x_sn, x_sc, x_ss, w_so, w_si, out_sn, out_sc, out_ss,
                    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One [BLOCK_M output channels, BLOCK_N positions] tile of out.
    o, o_mask, pid_p = _channel_tile_first(Co, BLOCK_M)
    n, s, p_mask = _positions(pid_p * BLOCK_N, P, S, BLOCK_N)
    x_cols = n * x_sn + s * x_ss
    w_rows = o.to(tl.int64) * w_so

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, Ci, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < Ci
        k64 = k.to(tl.int64)
        scale = tl.load(scale_ptr + k, mask=k_mask, other=0.0)
        shift = tl.load(shift_ptr + k, mask=k_mask, other=0.0)
        x_mask = k_mask[:, None] & p_mask[None, :]
        x = tl.load(x_ptr + (k64[:, None] * x_sc + x_cols[None, :]), mask=x_mask, other=0.0).to(ACC)
        r = _bn_relu(x, scale[:, None], shift[:, None], x_mask)
        w = tl.load(w_ptr + (w_rows[:, None] + k64[None, :] * w_si),
                    mask=o_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(w.to(DOT), r.to(x_ptr.dtype.element_ty).to(DOT), acc, input_precision="ieee", out_dtype=ACC)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(ACC)[:, None]
    out_offsets = o.to(tl.int64)[:, None] * out_sc + (n * out_sn + s * out_ss)[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=o_mask[:, None] & p_mask[None, :])


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, scale_ptr, shift_ptr, partial_ptr,
                        P, S, Ci, Co, steps_per_range,
                        g_sn, g_sc, g_ss, x_sn, x_sc, x_ss,
                        ACC: tl.constexpr, DOT: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One [BLOCK_M output channels, BLOCK_N input channels] tile of grad_weight, summed over one
    # range of steps_per_range * BLOCK_K positions, written to partial[range, o, i] (contiguous).
    # Programs of the same range (same positions, hence the same x and grad_out rows) run together.
    pid = tl.program_id(0)
    o_tiles = tl.cdiv(Co, BLOCK_M)
    i_tiles = tl.cdiv(Ci, BLOCK_N)
    pid_o = pid % o_tiles
    rest = pid // o_tiles
    pid_i = rest % i_tiles
    pid_r = rest // i_tiles

    o = pid_o * BLOCK_M + tl.arange(0, BLOCK_M)
    o_mask = o < Co
    i = pid_i * BLOCK_N + tl.arange(0, BLOCK_N)
    i_mask = i < Ci
    g_rows = o.to(tl.int64) * g_sc
    x_channels = i.to(tl.int64) * x_sc
    # The prologue's per-channel values are the same at every step: loaded once.
    scale = tl.load(scale_ptr + i, mask=i_mask, other=0.0)[None, :]
    shift = tl.load(shift_ptr + i, mask=i_mask, other=0.0)[None, :]

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    first = pid_r * steps_per_range
    last = tl.minimum(first + steps_per_range, tl.cdiv(P, BLOCK_K))
    for step in range(first, last):
        n, s, k_mask = _positions(step * BLOCK_K, P, S, BLOCK_K)
        g = tl.load(g_ptr + (g_rows[:, None] + (n * g_sn + s * g_ss)[None, :]),
                    mask=o_mask[:, None] & k_mask[None, :], other=0.0)
        x_mask = k_mask[:, None] & i_mask[None, :]
        x = tl.load(x_ptr + ((n * x_sn + s * x_ss)[:, None] + x_channels[None, :]), mask=x_mask,
                    other=0.0).to(ACC)
        r = _bn_relu(x, scale, shift, x_mask)
        acc = tl.dot(g.to(DOT), r.to(x_ptr.dtype.element_ty).to(DOT), acc, input_precision="ieee", out_dtype=ACC)

    partial_offsets = (pid_r.to(tl.int64) * Co + o.to(tl.int64))[:, None] * Ci + i[None, :]
    tl.store(partial_ptr + partial_offsets, acc, mask=o_mask[:, None] & i_mask[None, :])


@triton.jit
def _input_grad_kernel(g_ptr, w_ptr, x_ptr, mean_ptr, scale_ptr, shift_ptr, grad_z_ptr, partial_ptr,
                       P, S, Ci, Co, p_tiles,
                       g_sn, g_sc, g_ss, w_so, w_si, x_sn, x_sc, x_ss, dz_sn, dz_sc, dz_ss,
                       ACC: tl.constexpr, DOT: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One [BLOCK_M input channels, BLOCK_N positions] tile of dr = weight^T grad_out.
    i, i_mask, pid_p = _channel_tile_first(Ci, BLOCK_M)
    i64 = i.to(tl.int64)
    n, s, p_mask = _positions(pid_p * BLOCK_N, P, S, BLOCK_N)
    g_cols = n * g_sn + s * g_ss
    w_cols = i64 * w_si

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, Co, BLOCK_K):
        o = k0 + tl.arange(0, BLOCK_K)
        o_mask = o < Co
        o64 = o.to(tl.int64)
        w_t = tl.load(w_ptr + (w_cols[:, None] + o64[None, :] * w_so), mask=i_mask[:, None] & o_mask[None, :],
                      other=0.0)
        g = tl.load(g_ptr + (o64[:, None] * g_sc + g_cols[None, :]), mask=o_mask[:, None] & p_mask[None, :],
                    other=0.0)
        acc = tl.dot(w_t.to(DOT), g.to(DOT), acc, input_precision="ieee", out_dtype=ACC)

    # Epilogue: z recomputed from x, the ReLU mask, dz stored, and this tile's share of BN's sums
    # taken from dz before it is rounded to the storage type.
    tile_mask = i_mask[:, None] & p_mask[None, :]
    x = tl.load(x_ptr + (i64[:, None] * x_sc + (n * x_sn + s * x_ss)[None, :]), mask=tile_mask, other=0.0).to(ACC)
    scale = tl.load(scale_ptr + i, mask=i_mask, other=0.0)
    shift = tl.load(shift_ptr + i, mask=i_mask, other=0.0)
    mean = tl.load(mean_ptr + i, mask=i_mask, other=0.0)
    z = x * scale[:, None] + shift[:, None]
    dz = tl.where(~(z <= 0) & tile_mask, acc, 0.0)  # a NaN z passes the gradient, as in torch
    tl.store(grad_z_ptr + (i64[:, None] * dz_sc + (n * dz_sn + s * dz_ss)[None, :]),
             dz.to(grad_z_ptr.dtype.element_ty), mask=tile_mask)

    # partial[0, pid_p, i] = sum of dz, partial[1, pid_p, i] = sum of dz * (x - mean).
    sum_dz = tl.sum(dz, axis=1)
    sum_dz_xmu = tl.sum(dz * (x - mean[:, None]), axis=1)
    row = pid_p.to(tl.int64) * Ci + i64
    tl.store(partial_ptr + row, sum_dz, mask=i_mask)
    tl.store(partial_ptr + (tl.cast(p_tiles, tl.int64) * Ci + row), sum_dz_xmu, mask=i_mask)


def _geometry(t: torch.Tensor, name: str):
    """(N, C, S, batch, channel and spatial strides) of the [N, C, H*W] view of a 4-d tensor."""
    if t.dim() != 4:
        raise ValueError(f"conv1x1_bn_relu: {name} must be 4-d [N, C, H, W], got {tuple(t.shape)}")
    n, c, h, w = t.shape
    sn, sc, sh, sw = t.stride()
    if h == 1:
        spatial_stride = sw
    elif w == 1:
        spatial_stride = sh
    elif sh == w * sw:
        spatial_stride = sw
    else:
        raise ValueError(f"conv1x1_bn_relu: {name}'s H and W do not merge into one index (strides {t.stride()})")
    return n, c, h * w, sn, sc, spatial_stride


def _acc_dtype(dtype: torch.dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_dtype(dtype: torch.dtype):
    """The dots' operand type: x's dtype (fp32 for bf16 under the interpreter, see above)."""
    if dtype == torch.bfloat16:
        return tl.float32 if _INTERPRETED else tl.bfloat16
    return {torch.float16: tl.float16, torch.float32: tl.float32, torch.float64: tl.float64}[dtype]


def _tiles(dtype: torch.dtype):
    return _TILES_16BIT if dtype in (torch.float16, torch.bfloat16) else _TILES_FULL


def _check_common(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, name: str):
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"{name}: unsupported dtype {x.dtype}")
    n, c, s = _geometry(x, "x")[:3]
    acc = _acc_dtype(x.dtype)
    for t, what in ((scale, "scale"), (shift, "shift")):
        if t.shape != (c,) or t.dtype != acc or not t.is_contiguous():
            raise ValueError(f"{name}: {what} must be a contiguous [{c}] {acc} tensor, "
                             f"got {tuple(t.shape)} {t.dtype}")
    # Position indices are int32 in the kernels, up to one tile past the last position.
    if n * s > _MAX_POSITIONS:
        raise ValueError(f"{name}: N * H * W = {n * s} positions per channel; at most {_MAX_POSITIONS} supported")


def _check_weight(weight: torch.Tensor, x: torch.Tensor, name: str):
    if weight.dim() != 2 or weight.shape[1] != x.shape[1] or weight.dtype != x.dtype:
        raise ValueError(f"{name}: weight must be [Co, {x.shape[1]}] {x.dtype}, "
                         f"got {tuple(weight.shape)} {weight.dtype}")


def _check_device(name: str, x: torch.Tensor, *others):
    for t in others:
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: every tensor must be on {x.device}, got one on {t.device}")


def conv1x1_bn_relu_forward(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
                            bias, out: torch.Tensor) -> torch.Tensor:
    """out[n, o, s] = bias[o] + sum_i weight[o, i] * relu(x[n, i, s] * scale[i] + shift[i]).

    x: [N, Ci, H, W]; scale, shift: [Ci] in the accumulation type; weight: [Co, Ci] in x's dtype;
    bias: [Co] or None; out: [N, Co, H, W] in x's dtype, written in place and returned."""
    name = "conv1x1_bn_relu_forward"
    _check_common(x, scale, shift, name)
    _check_weight(weight, x, name)
    n, ci, s, x_sn, x_sc, x_ss = _geometry(x, "x")
    co = weight.shape[0]
    if out.shape != (n, co, x.shape[2], x.shape[3]) or out.dtype != x.dtype:
        raise ValueError(f"{name}: out must be [{n}, {co}, {x.shape[2]}, {x.shape[3]}] {x.dtype}, "
                         f"got {tuple(out.shape)} {out.dtype}")
    if bias is not None and bias.shape != (co,):
        raise ValueError(f"{name}: bias must be [{co}], got {tuple(bias.shape)}")
    _check_device(name, x, scale, shift, weight, bias, out)
    if out.numel() == 0:
        return out
    if ci == 0:
        # An empty sum: the bias alone.
        if bias is None:
            out.zero_()
        else:
            out.copy_(bias.view(1, co, 1, 1).expand_as(out))
        return out
    _, _, _, out_sn, out_sc, out_ss = _geometry(out, "out")
    tiles = _tiles(x.dtype)
    p = n * s
    grid = (triton.cdiv(co, tiles["BLOCK_M"]) * triton.cdiv(p, tiles["BLOCK_N"]),)
    _forward_kernel[grid](
        x, weight, bias if bias is not None else weight, scale, shift, out,
        p, s, ci, co,
        x_sn, x_sc, x_ss, weight.stride(0), weight.stride(1), out_sn, out_sc, out_ss,
        HAS_BIAS=bias is not None, ACC=_tl_acc(x.dtype), DOT=_dot_dtype(x.dtype), **tiles, **_COMPILE_OPTIONS)
    return out


def _weight_grad_split(p: int, out_tiles: int, block_k: int):
    """(ranges, steps per range) of the weight gradient's reduction over p positions: a function
    of the shape alone, so that the order of the additions is too."""
    steps = triton.cdiv(p, block_k)
    wanted = max(1, min(triton.cdiv(_WEIGHT_GRAD_TARGET_PROGRAMS, out_tiles),
                        steps // _WEIGHT_GRAD_MIN_STEPS_PER_RANGE))
    steps_per_range = triton.cdiv(steps, wanted)
    # Recounted so that no range is empty.
    return triton.cdiv(steps, steps_per_range), steps_per_range


def conv1x1_bn_relu_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                                shift: torch.Tensor) -> torch.Tensor:
    """grad_weight[o, i] = sum_{n, s} grad_out[n, o, s] * relu(x[n, i, s] * scale[i] + shift[i]),
    a new [Co, Ci] tensor in x's dtype, accumulated in fp32 (fp64 for fp64), deterministically."""
    name = "conv1x1_bn_relu_weight_grad"
    _check_common(x, scale, shift, name)
    n, ci, s, x_sn, x_sc, x_ss = _geometry(x, "x")
    gn, co, _, g_sn, g_sc, g_ss = _geometry(grad_out, "grad_out")
    if gn != n or grad_out.shape[2:] != x.shape[2:] or grad_out.dtype != x.dtype:
        raise ValueError(f"{name}: grad_out must be [{n}, Co, {x.shape[2]}, {x.shape[3]}] {x.dtype}, "
                         f"got {tuple(grad_out.shape)} {grad_out.dtype}")
    _check_device(name, x, grad_out, scale, shift)
    p = n * s
    if co == 0 or ci == 0 or p == 0:
        return torch.zeros((co, ci), dtype=x.dtype, device=x.device)
    tiles = _tiles(x.dtype)
    # The weight gradient's tile is output channels x input channels; its steps go over positions.
    out_tiles = triton.cdiv(co, tiles["BLOCK_M"]) * triton.cdiv(ci, tiles["BLOCK_N"])
    ranges, steps_per_range = _weight_grad_split(p, out_tiles, tiles["BLOCK_K"])
    partial = torch.empty((ranges, co, ci), dtype=_acc_dtype(x.dtype), device=x.device)
    _weight_grad_kernel[(out_tiles * ranges,)](
        grad_out, x, scale, shift, partial,
        p, s, ci, co, steps_per_range,
        g_sn, g_sc, g_ss, x_sn, x_sc, x_ss,
        ACC=_tl_acc(x.dtype), DOT=_dot_dtype(x.dtype), **tiles, **_COMPILE_OPTIONS)
    # The ranges' partials added in a fixed order (torch's reduction over a fixed shape).
    return partial.sum(dim=0).to(x.dtype)


def conv1x1_bn_relu_input_grad(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                               scale: torch.Tensor, shift: torch.Tensor, grad_z: torch.Tensor):
    """dz = (sum_o weight[o, i] * grad_out[n, o, s]) where x * scale + shift > 0, else 0, written
    into grad_z (x's shape and dtype, any strides whose H and W merge); returns the new [Ci]
    tensors (sum_dz, sum_dz_xmu) = (sum of dz, sum of dz * (x - mean)) in the accumulation type."""
    name = "conv1x1_bn_relu_input_grad"
    _check_common(x, scale, shift, name)
    _check_weight(weight, x, name)
    n, ci, s, x_sn, x_sc, x_ss = _geometry(x, "x")
    acc_dtype = _acc_dtype(x.dtype)
    co = weight.shape[0]
    if mean.shape != (ci,) or mean.dtype != acc_dtype or not mean.is_contiguous():
        raise ValueError(f"{name}: mean must be a contiguous [{ci}] {acc_dtype} tensor")
    if grad_out.shape != (n, co, x.shape[2], x.shape[3]) or grad_out.dtype != x.dtype:
        raise ValueError(f"{name}: grad_out must be [{n}, {co}, {x.shape[2]}, {x.shape[3]}] {x.dtype}, "
                         f"got {tuple(grad_out.shape)} {grad_out.dtype}")
    if grad_z.shape != x.shape or grad_z.dtype != x.dtype:
        raise ValueError(f"{name}: grad_z must be {tuple(x.shape)} {x.dtype}, got {tuple(grad_z.shape)} {grad_z.dtype}")
    _check_device(name, x, grad_out, weight, mean, scale, shift, grad_z)
    p = n * s
    if ci == 0 or p == 0 or co == 0:
        # No position, no channel, or dr = 0 everywhere (an empty sum over output channels).
        grad_z.zero_()
        zeros = torch.zeros(ci, dtype=acc_dtype, device=x.device)
        return zeros, zeros.clone()
    _, _, _, g_sn, g_sc, g_ss = _geometry(grad_out, "grad_out")
    _, _, _, dz_sn, dz_sc, dz_ss = _geometry(grad_z, "grad_z")
    tiles = _tiles(x.dtype)
    p_tiles = triton.cdiv(p, tiles["BLOCK_N"])
    # partial[0] holds the sums of dz, partial[1] those of dz * (x - mean): [2, position tile, Ci].
    partial = torch.empty((2, p_tiles, ci), dtype=acc_dtype, device=x.device)
    grid = (triton.cdiv(ci, tiles["BLOCK_M"]) * p_tiles,)
    _input_grad_kernel[grid](
        grad_out, weight, x, mean, scale, shift, grad_z, partial,
        p, s, ci, co, p_tiles,
        g_sn, g_sc, g_ss, weight.stride(0), weight.stride(1), x_sn, x_sc, x_ss, dz_sn, dz_sc, dz_ss,
        ACC=_tl_acc(x.dtype), DOT=_dot_dtype(x.dtype), **tiles, **_COMPILE_OPTIONS)
    # The tiles' partials added in a fixed order.
    return partial[0].sum(dim=0), partial[1].sum(dim=0)
