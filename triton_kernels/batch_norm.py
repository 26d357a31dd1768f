"""BatchNorm -> ReLU in Triton: batch statistics, the fused apply and its backward (the math of
csrc/common/batch_norm.h), with an optional residual added before the ReLU (BN-add-ReLU, ResNet's
block tail: z = x * scale + shift + r, d r = dz; HAS_RESIDUAL is a constexpr, so BN-ReLU pays
nothing for it).

Per channel c, over the M = N * H * W values of x:
    mean_c, var_c  the mean and the biased variance (the BN statistics)
    scale = gamma * invstd,  shift = beta - mean * scale      (computed by the caller)
    z = x * scale + shift,   r = max(z, 0)   (a NaN z stays NaN, as torch.relu)
Backward, with dz = 0 where z <= 0 else dr (a NaN z passes dr, as in threshold_backward):
    sum_dz     = sum(dz)                  (= d beta)
    sum_dz_xmu = sum(dz * (x - mean))     (= d gamma / invstd)
    dx         = dz * scale + x * coef_x + coef_c
where, in training, coef_x = -scale * invstd^2 * sum_dz_xmu / M and
coef_c = -scale * sum_dz / M - coef_x * mean; in eval coef_x = coef_c = 0 (the caller's choice,
so one elementwise kernel serves training, eval and a plain affine ReLU).

Nothing but x (and the per-channel vectors) is kept for backward: z, and so the ReLU mask, is
recomputed from x with the same expression as the forward.

Layout. A tensor [N, C, H, W] whose H and W merge into one spatial index s is addressed as
n * batch_stride + c * channel_stride + s * spatial_stride: contiguous, channels_last and channel
slices of either (a DenseNet block's shared buffer) go through the same code. Where n and s also
merge (channels_last, H*W == 1, N == 1) they become one spatial index of N*H*W positions, so tiles
stay full. Every program works on tiles of BLOCK_C channels x BLOCK_S positions of one n; the
tile's long side follows the input's unit stride (positions for NCHW, channels for
channels_last), so loads are coalesced either way. Offsets are int64.

Numerics. fp16/bf16/fp32 compute in fp32, fp64 in fp64 (ACC). The statistics are two passes over
each tile held in registers (sum, mean, then the deviations from that mean, whose sum corrects
the mean and m2 for the first mean's rounding), the tiles' (count, mean, m2) combined by Chan's
formula in fp64 within a program, then across programs in a fixed order: no E[x^2] - E[x]^2
cancellation. The backward sums add per-tile ACC sums in fp64 per program; the per-program
partials are summed on the device by torch. No atomics: results depend only on the shapes and
layouts, never on scheduling.
"""
import triton
import triton.language as tl
import torch

# Elements per tile, and the longest side a tile gets along its unit-stride direction.
_TILE = 2048
_MAX_INNER_S = 512
_MAX_INNER_C = 128
_NUM_WARPS = 4
# Programs the reductions aim for (one per (chunk of tiles, channel block)): enough to fill a
# GPU, few enough that the partials stay small. A constant, so the summation order (and so the
# result) depends on the shape alone, not on the device.
_TARGET_PROGRAMS = 1024
# Partials per step of the statistics' final combine, and channels per program there.
_FINAL_BLOCK_P = 16
_FINAL_BLOCK_C = 64
# No fused multiply-adds: z = x * scale + shift is rounded after the multiply exactly as written,
# so every BN-ReLU kernel (conv1x1_bn_relu.py's too), the C++ kernels and the plain-torch
# reference see the same z, and so the same ReLU mask (an fma could move a z within an ulp of 0
# across it).
_COMPILE_OPTIONS = dict(enable_fp_fusion=False)
# The interpreter converts fp32 to bf16 by truncation (it keeps bf16 as raw 16-bit words); there
# the stores round to nearest even by hand, as the GPU's conversion does.
_INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _to_storage(v, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    # v (ACC) in the stored dtype, rounded to nearest even.
    if ROUND_BF16 and dtype == tl.bfloat16 and v.dtype == tl.float32:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        v = tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
    return v.to(dtype)


@triton.jit
def _channels(C, BLOCK_C: tl.constexpr):
    c = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    return c, c < C


@triton.jit
def _chunk_tiles(chunk, tiles, chunks):
    # The tiles [first, last) that reduction program `chunk` walks: a split by shape alone, so the
    # summation order (and the result) is the same on every device.
    return chunk * tiles // chunks, (chunk + 1) * tiles // chunks


@triton.jit
def _tile(t, S, s_blocks, BLOCK_S: tl.constexpr):
    # Tile t covers positions [s0, s0 + BLOCK_S) of sample n; `valid` of them lie inside S.
    # (tl.cast, not .to: under the interpreter a loop index is a Python int.)
    t64 = tl.cast(t, tl.int64)
    n = t64 // s_blocks
    s0 = (t64 - n * s_blocks) * BLOCK_S
    s = s0 + tl.arange(0, BLOCK_S)
    valid = tl.minimum(S - s0, BLOCK_S)
    return n, s, s < S, valid


@triton.jit
def _offsets(n, c, s, batch_stride, channel_stride, spatial_stride):
    # [BLOCK_C, BLOCK_S] int64 offsets; c and s are int64 already.
    return n * batch_stride + c[:, None] * channel_stride + s[None, :] * spatial_stride


@triton.jit
def _load_channel(ptr, c, cmask, ACC: tl.constexpr):
    return tl.load(ptr + c, mask=cmask, other=0.0).to(ACC)[:, None]


@triton.jit
def _affine(x, scale, shift):
    # z = x * scale + shift: the forward and both backward kernels compute it through here.
    return x * scale + shift


@triton.jit
def _combined_mean(mean_a, mean_b, delta, weight_a, weight_b):
    # As combine_moments: an infinite mean makes delta infinite (and delta * a weight of 0 NaN),
    # so the means are then weighted directly, giving torch's +-inf (NaN for +inf with -inf).
    finite = tl.abs(delta) < float("inf")
    return tl.where(finite, mean_a + delta * weight_b, mean_a * weight_a + mean_b * weight_b)


@triton.jit
def _chan_combine(count_a, mean_a, m2_a, count_b, mean_b, m2_b):
    # Chan, Golub and LeVeque, as combine_moments in csrc/common/batch_norm.h. Two empty sets
    # (count 0: masked partials) give 0 / 1 = 0 for the weight and leave a as it is.
    count = count_a + count_b
    weight_b = count_b / tl.maximum(count, 1.0)
    delta = mean_b - mean_a
    mean = _combined_mean(mean_a, mean_b, delta, count_a / tl.maximum(count, 1.0), weight_b)
    m2 = m2_a + m2_b + delta * delta * count_a * weight_b
    return count, mean, m2


@triton.jit
def _stats_partial_kernel(x_ptr, count_ptr, part_ptr, C, S, tiles, s_blocks, chunks,
                          x_sn, x_sc, x_ss,
                          ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # Program (chunk, channel block): (count, mean, m2) of its channels over tiles
    # [chunk * tiles / chunks, (chunk + 1) * tiles / chunks), written to row `chunk` of the
    # [2, chunks, C] fp64 partials (means, then m2) and count_ptr[chunk].
    chunk = tl.program_id(0).to(tl.int64)
    c, cmask = _channels(C, BLOCK_C)
    first, last = _chunk_tiles(chunk, tiles, chunks)
    count = tl.full((), 0, tl.int64)
    mean = tl.zeros([BLOCK_C], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    for t in range(first, last):
        n, s, smask, valid = _tile(t, S, s_blocks, BLOCK_S)
        mask = cmask[:, None] & smask[None, :]
        x = tl.load(x_ptr + _offsets(n, c, s, x_sn, x_sc, x_ss), mask=mask, other=0.0).to(ACC)
        # Two passes over the tile in registers: a first mean, then the deviations from it. Their
        # sum corrects both the mean (by sum / valid) and m2 (by sum^2 / valid: the "corrected
        # two-pass" of Chan, Golub and LeVeque), so any rounding of the first mean costs nothing
        # (uncorrected, it would add valid * error^2 to m2: a relative 1e-3 on fp32 data of mean
        # 1e4 and deviation 1e-2). So the first mean may as well multiply by one reciprocal.
        valid_f64 = valid.to(tl.float64)
        inverse = 1.0 / valid_f64
        first_mean = tl.sum(x, axis=1) * inverse.to(ACC)
        deviation = tl.where(mask, x - first_mean[:, None], 0.0)
        deviation_sum = tl.sum(deviation, axis=1).to(tl.float64)
        correction = deviation_sum * inverse
        # An infinite first mean is kept uncorrected (its deviations hold inf - inf = NaN): for an
        # inf in the tile it is torch's mean, +-inf; for an fp32 sum of finite values past the
        # largest float (values near 3e38) it stays inf where torch's mean is finite.
        first_mean_f64 = first_mean.to(tl.float64)
        tile_mean = tl.where(tl.abs(first_mean_f64) < float("inf"), first_mean_f64 + correction, first_mean_f64)
        tile_m2 = tl.sum(deviation * deviation, axis=1).to(tl.float64) - deviation_sum * correction
        tile_m2 = tl.where(tile_m2 < 0, 0.0, tile_m2)  # rounding only; a NaN stays NaN
        # Chan's combine with the tile; the weight is one scalar for all channels.
        total = count + valid
        weight = valid_f64 / total.to(tl.float64)
        delta = tile_mean - mean
        mean = _combined_mean(mean, tile_mean, delta, count.to(tl.float64) / total.to(tl.float64), weight)
        m2 = m2 + tile_m2 + delta * delta * count.to(tl.float64) * weight
        count = total
    row = chunk * C + c
    tl.store(part_ptr + row, mean, mask=cmask)
    tl.store(part_ptr + tl.cast(chunks, tl.int64) * C + row, m2, mask=cmask)
    tl.store(count_ptr + chunk, count, mask=tl.program_id(1) == 0)


@triton.jit
def _stats_final_kernel(count_ptr, part_ptr, mean_ptr, var_ptr, C, chunks,
                        ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Combines the partials of each channel in a fixed order: BLOCK_P rows at a time by a
    # fixed tree, the steps in chunk order. All in fp64.
    c = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    count = tl.zeros([BLOCK_C], dtype=tl.float64)
    mean = tl.zeros([BLOCK_C], dtype=tl.float64)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float64)
    for p0 in range(0, chunks, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
        pmask = p < chunks
        mask = pmask[:, None] & cmask[None, :]
        rows = p[:, None] * C + c[None, :]
        step_count = tl.load(count_ptr + p, mask=pmask, other=0).to(tl.float64)
        step_count = tl.broadcast_to(step_count[:, None], (BLOCK_P, BLOCK_C))
        step_mean = tl.load(part_ptr + rows, mask=mask, other=0.0)
        step_m2 = tl.load(part_ptr + tl.cast(chunks, tl.int64) * C + rows, mask=mask, other=0.0)
        step_count, step_mean, step_m2 = tl.reduce((step_count, step_mean, step_m2), 0, _chan_combine)
        count, mean, m2 = _chan_combine(count, mean, m2, step_count, step_mean, step_m2)
    tl.store(mean_ptr + c, mean.to(ACC), mask=cmask)
    tl.store(var_ptr + c, (m2 / count).to(ACC), mask=cmask)


@triton.jit
def _add_residual(z, r_ptr, n, c, s, mask, r_sn, r_sc, r_ss, ACC: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    # BN-add-ReLU: z + residual (after BN's affine, as torch.nn's block adds); BN-ReLU: z.
    if HAS_RESIDUAL:
        z = z + tl.load(r_ptr + _offsets(n, c, s, r_sn, r_sc, r_ss), mask=mask, other=0.0).to(ACC)
    return z


@triton.jit
def _bn_relu_kernel(x_ptr, r_ptr, scale_ptr, shift_ptr, out_ptr, C, S, s_blocks,
                    x_sn, x_sc, x_ss, r_sn, r_sc, r_ss, o_sn, o_sc, o_ss,
                    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                    ROUND_BF16: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    c, cmask = _channels(C, BLOCK_C)
    n, s, smask, _ = _tile(tl.program_id(0), S, s_blocks, BLOCK_S)
    mask = cmask[:, None] & smask[None, :]
    x = tl.load(x_ptr + _offsets(n, c, s, x_sn, x_sc, x_ss), mask=mask, other=0.0).to(ACC)
    z = _affine(x, _load_channel(scale_ptr, c, cmask, ACC), _load_channel(shift_ptr, c, cmask, ACC))
    z = _add_residual(z, r_ptr, n, c, s, mask, r_sn, r_sc, r_ss, ACC, HAS_RESIDUAL)
    # relu_value: z < 0 ? 0 : z, so a NaN stays NaN.
    r = tl.where(z < 0, 0.0, z)
    out = _to_storage(r, out_ptr.dtype.element_ty, ROUND_BF16)
    tl.store(out_ptr + _offsets(n, c, s, o_sn, o_sc, o_ss), out, mask=mask)


@triton.jit
def _backward_reduce_kernel(grad_ptr, x_ptr, r_ptr, mean_ptr, scale_ptr, shift_ptr, part_ptr,
                            C, S, tiles, s_blocks, chunks,
                            g_sn, g_sc, g_ss, x_sn, x_sc, x_ss, r_sn, r_sc, r_ss,
                            ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                            HAS_RESIDUAL: tl.constexpr):
    # Program (chunk, channel block): sums of dz and dz * (x - mean) over the chunk's tiles,
    # per-tile sums in ACC added in fp64, to row `chunk` of the [2, chunks, C] fp64 partials.
    chunk = tl.program_id(0).to(tl.int64)
    c, cmask = _channels(C, BLOCK_C)
    mean = _load_channel(mean_ptr, c, cmask, ACC)
    scale = _load_channel(scale_ptr, c, cmask, ACC)
    shift = _load_channel(shift_ptr, c, cmask, ACC)
    first, last = _chunk_tiles(chunk, tiles, chunks)
    sum_dz = tl.zeros([BLOCK_C], dtype=tl.float64)
    sum_dz_xmu = tl.zeros([BLOCK_C], dtype=tl.float64)
    for t in range(first, last):
        n, s, smask, _ = _tile(t, S, s_blocks, BLOCK_S)
        mask = cmask[:, None] & smask[None, :]
        x = tl.load(x_ptr + _offsets(n, c, s, x_sn, x_sc, x_ss), mask=mask, other=0.0).to(ACC)
        g = tl.load(grad_ptr + _offsets(n, c, s, g_sn, g_sc, g_ss), mask=mask, other=0.0).to(ACC)
        z = _add_residual(_affine(x, scale, shift), r_ptr, n, c, s, mask, r_sn, r_sc, r_ss, ACC, HAS_RESIDUAL)
        # relu_masked_grad; masked-off lanes add +0 (even with a non-finite mean).
        dz = tl.where(mask & ~(z <= 0), g, 0.0)
        dz_xmu = tl.where(mask, dz * (x - mean), 0.0)
        sum_dz += tl.sum(dz, axis=1).to(tl.float64)
        sum_dz_xmu += tl.sum(dz_xmu, axis=1).to(tl.float64)
    row = chunk * C + c
    tl.store(part_ptr + row, sum_dz, mask=cmask)
    tl.store(part_ptr + tl.cast(chunks, tl.int64) * C + row, sum_dz_xmu, mask=cmask)


@triton.jit
def _bn_relu_backward_kernel(grad_ptr, x_ptr, r_ptr, scale_ptr, shift_ptr, coef_x_ptr, coef_c_ptr, out_ptr,
                             dr_ptr, C, S, s_blocks,
                             g_sn, g_sc, g_ss, x_sn, x_sc, x_ss, r_sn, r_sc, r_ss, o_sn, o_sc, o_ss,
                             dr_sn, dr_sc, dr_ss,
                             ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                             ROUND_BF16: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                             RESIDUAL_GRAD: tl.constexpr):
    # dx, and with RESIDUAL_GRAD the residual's gradient dz (BN-add-ReLU's identity path).
    c, cmask = _channels(C, BLOCK_C)
    n, s, smask, _ = _tile(tl.program_id(0), S, s_blocks, BLOCK_S)
    mask = cmask[:, None] & smask[None, :]
    x = tl.load(x_ptr + _offsets(n, c, s, x_sn, x_sc, x_ss), mask=mask, other=0.0).to(ACC)
    g = tl.load(grad_ptr + _offsets(n, c, s, g_sn, g_sc, g_ss), mask=mask, other=0.0).to(ACC)
    scale = _load_channel(scale_ptr, c, cmask, ACC)
    z = _add_residual(_affine(x, scale, _load_channel(shift_ptr, c, cmask, ACC)), r_ptr, n, c, s, mask,
                      r_sn, r_sc, r_ss, ACC, HAS_RESIDUAL)
    dz = tl.where(z <= 0, 0.0, g)  # relu_masked_grad: a NaN z passes the gradient, as in torch
    coef_x = _load_channel(coef_x_ptr, c, cmask, ACC)
    # statistics_term: no x term where coef_x is 0 (eval), so an infinite x gives no NaN.
    dx = dz * scale + tl.where(coef_x == 0, 0.0, x * coef_x) + _load_channel(coef_c_ptr, c, cmask, ACC)
    out = _to_storage(dx, out_ptr.dtype.element_ty, ROUND_BF16)
    tl.store(out_ptr + _offsets(n, c, s, o_sn, o_sc, o_ss), out, mask=mask)
    if RESIDUAL_GRAD:
        tl.store(dr_ptr + _offsets(n, c, s, dr_sn, dr_sc, dr_ss), _to_storage(dz, dr_ptr.dtype.element_ty, ROUND_BF16),
                 mask=mask)


# ---- launchers ----------------------------------------------------------------------------

def _acc_tl(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _acc_torch(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _strides(t: torch.Tensor):
    """(batch, channel, spatial) strides of t with H and W merged into s (the caller guarantees
    stride(2) == W * stride(3), or H == 1, or W == 1)."""
    sn, sc, sh, sw = t.stride()
    return [sn, sc, sh if t.shape[3] == 1 else sw]


def _geometry(*tensors: torch.Tensor):
    """(N, C, S, [strides of each tensor]) of same-shaped tensors; n and s merged into one
    spatial index where every tensor allows it (then N == 1)."""
    n, c, h, w = tensors[0].shape
    spatial = h * w
    strides = [_strides(t) for t in tensors]
    if n > 1 and all(spatial == 1 or sn == spatial * ss for sn, _, ss in strides):
        strides = [[sn, sc, ss if spatial > 1 else sn] for sn, sc, ss in strides]
        n, spatial = 1, n * spatial
    return n, c, spatial, strides


def _tile_shape(channels: int, spatial: int, channel_stride: int, spatial_stride: int, elements: int = _TILE):
    """(BLOCK_C, BLOCK_S): the long side along the unit-stride direction of the tensor read."""
    channels_inner = channels > 1 and (spatial == 1 or abs(channel_stride) < abs(spatial_stride))
    if channels_inner:
        block_c = min(_MAX_INNER_C, triton.next_power_of_2(channels))
        block_s = min(max(1, elements // block_c), triton.next_power_of_2(spatial))
    else:
        block_s = min(_MAX_INNER_S, triton.next_power_of_2(spatial))
        block_c = min(max(1, elements // block_s), triton.next_power_of_2(channels))
    return block_c, block_s


class _Plan:
    """Geometry, tile and grid shared by the kernels; the tile follows the layout of x."""

    def __init__(self, x: torch.Tensor, *others: torch.Tensor):
        self.n, self.c, self.s, strides = _geometry(x, *others)
        self.strides = [v for st in strides for v in st]  # flattened, in argument order
        _, x_sc, x_ss = strides[0]
        self.block_c, self.block_s = _tile_shape(self.c, self.s, x_sc, x_ss)
        self.s_blocks = triton.cdiv(self.s, self.block_s)
        self.tiles = self.n * self.s_blocks
        self.c_blocks = triton.cdiv(self.c, self.block_c)
        if self.c_blocks > 65535:  # grid axis 1 (never reached: C > 262140 channels)
            raise ValueError(f"batch_norm: {self.c} channels need more than 65535 channel blocks")
        self.chunks = max(1, min(self.tiles, triton.cdiv(_TARGET_PROGRAMS, self.c_blocks)))
        self.constants = dict(ACC=_acc_tl(x.dtype), BLOCK_C=self.block_c, BLOCK_S=self.block_s,
                              num_warps=_NUM_WARPS, **_COMPILE_OPTIONS)


def batch_norm_stats(x: torch.Tensor):
    """(mean, var) per channel of the [N, C, H, W] x over (N, H, W): var is the biased variance.
    New 1-d tensors in fp32 (fp64 for an fp64 x); NaN where a channel has no values."""
    acc = _acc_torch(x.dtype)
    channels = x.shape[1]
    if x.numel() == 0:
        nan = torch.full((channels,), float("nan"), dtype=acc, device=x.device)
        return nan, nan.clone()
    plan = _Plan(x)
    counts = torch.empty(plan.chunks, dtype=torch.int64, device=x.device)
    partials = torch.empty((2, plan.chunks, plan.c), dtype=torch.float64, device=x.device)
    _stats_partial_kernel[(plan.chunks, plan.c_blocks)](
        x, counts, partials, plan.c, plan.s, plan.tiles, plan.s_blocks, plan.chunks, *plan.strides,
        **plan.constants)
    mean = torch.empty(channels, dtype=acc, device=x.device)
    var = torch.empty(channels, dtype=acc, device=x.device)
    _stats_final_kernel[(triton.cdiv(plan.c, _FINAL_BLOCK_C),)](
        counts, partials, mean, var, plan.c, plan.chunks, ACC=_acc_tl(x.dtype), BLOCK_P=_FINAL_BLOCK_P,
        BLOCK_C=_FINAL_BLOCK_C, num_warps=_NUM_WARPS, **_COMPILE_OPTIONS)
    return mean, var


def bn_relu(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor,
            residual: torch.Tensor | None = None) -> torch.Tensor:
    """out = max(x * scale[c] + shift[c] (+ residual), 0), computed in the accumulation type; out is
    preallocated with x's shape and dtype, in any strides whose H and W merge (residual too)."""
    if x.numel() == 0:
        return out
    # Without a residual, x stands in for it (never read: HAS_RESIDUAL is a constexpr).
    r = x if residual is None else residual
    plan = _Plan(x, r, out)
    _bn_relu_kernel[(plan.tiles, plan.c_blocks)](
        x, r, scale, shift, out, plan.c, plan.s, plan.s_blocks, *plan.strides,
        ROUND_BF16=_INTERPRETED, HAS_RESIDUAL=residual is not None, **plan.constants)
    return out


def bn_relu_backward_reduce(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor,
                            shift: torch.Tensor, residual: torch.Tensor | None = None):
    """(sum_dz, sum_dz_xmu) per channel: dz = grad where x * scale + shift (+ residual) > 0 else 0,
    summed, and summed times (x - mean). New 1-d tensors in the accumulation type."""
    acc = _acc_torch(x.dtype)
    if x.numel() == 0:
        zeros = torch.zeros(x.shape[1], dtype=acc, device=x.device)
        return zeros, zeros.clone()
    r = x if residual is None else residual
    plan = _Plan(x, grad, r)
    partials = torch.empty((2, plan.chunks, plan.c), dtype=torch.float64, device=x.device)
    # Strides in the kernel's argument order: grad's, x's, then the residual's.
    x_strides, g_strides, r_strides = plan.strides[:3], plan.strides[3:6], plan.strides[6:]
    _backward_reduce_kernel[(plan.chunks, plan.c_blocks)](
        grad, x, r, mean, scale, shift, partials, plan.c, plan.s, plan.tiles, plan.s_blocks, plan.chunks,
        *g_strides, *x_strides, *r_strides, HAS_RESIDUAL=residual is not None, **plan.constants)
    # Each channel's partials added in one fixed order (torch's reductions are deterministic).
    return partials[0].sum(dim=0).to(acc), partials[1].sum(dim=0).to(acc)


def bn_relu_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                     coef_x: torch.Tensor, coef_c: torch.Tensor, out: torch.Tensor,
                     residual: torch.Tensor | None = None, grad_residual: torch.Tensor | None = None) -> torch.Tensor:
    """out = dz * scale + x * coef_x + coef_c per channel, dz = grad where x * scale + shift
    (+ residual) > 0 else 0, in the accumulation type, rounded to x's dtype; grad_residual (given
    only with a residual) receives dz. Every tensor in any strides whose H and W merge."""
    if x.numel() == 0:
        return out
    r = x if residual is None else residual
    dr = out if grad_residual is None else grad_residual
    plan = _Plan(x, grad, r, out, dr)
    x_strides, g_strides, r_strides, o_strides, dr_strides = (plan.strides[i:i + 3] for i in range(0, 15, 3))
    _bn_relu_backward_kernel[(plan.tiles, plan.c_blocks)](
        grad, x, r, scale, shift, coef_x, coef_c, out, dr, plan.c, plan.s, plan.s_blocks,
        *g_strides, *x_strides, *r_strides, *o_strides, *dr_strides, ROUND_BF16=_INTERPRETED,
        HAS_RESIDUAL=residual is not None, RESIDUAL_GRAD=grad_residual is not None, **plan.constants)
    return out
