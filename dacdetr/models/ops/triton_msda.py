"""Fused multi-scale deformable attention in Triton (forward and backward).

Layout (all contiguous):
    value               (B, S, M, D)
    sampling_locations  (B, Lq, M, L, P, 2)   normalised (x, y)
    attention_weights   (B, Lq, M, L, P)
    output              (B, Lq, M, D) == (B, Lq, M * D)

Every (batch, query, head) triple is one *row*; rows are numbered exactly as the
flattened ``(B, Lq, M)`` prefix of the location / weight / output tensors, so a
row's locations, weights and output are contiguous.  A program owns
``BLOCK_N`` consecutive rows and the ``D`` channels of their head as a
``(BLOCK_N, BLOCK_D)`` tile.  For each level and point it computes the four
bilinear corners of every row and gathers the corner pixels' ``D`` channels
(one contiguous, aligned segment per row: ``value[b, s, m, :]``), accumulating
in float32.  Bilinear sampling uses pixel coordinates ``x * W - 0.5`` /
``y * H - 0.5`` with zeros outside the map, which is ``grid_sample(bilinear,
zeros, align_corners=False)`` on the grid ``2 * loc - 1``.

Backward recomputes the corners and
    grad_attention[row, l, p] = <grad_out[row], sample(row, l, p)>
    grad_location[row, l, p]  = attn * <grad_out[row], d sample / d (x, y)>
    grad_value[corner]       += attn * corner_weight * grad_out[row]   (atomic, fp32)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["ms_deform_attn_triton", "MSDeformAttnTritonFunction", "msda_forward", "msda_backward",
           "default_config"]


@triton.jit
def _tile_mask(row_mask, chans, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(BLOCK_N, BLOCK_D) mask from a row mask; the channel test is compiled only when D < BLOCK_D."""
    if D == BLOCK_D:
        mask = tl.broadcast_to(row_mask[:, None], (BLOCK_N, BLOCK_D))
    else:
        mask = row_mask[:, None] & (chans < D)[None, :]
    return mask


@triton.jit
def _gather(ptr, pix, chans, ok, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load the D channels at element offsets ``pix`` (one pixel per row) as float32, zeros where not ok."""
    tile = tl.load(ptr + pix[:, None] + chans[None, :], mask=_tile_mask(ok, chans, D, BLOCK_N, BLOCK_D), other=0.0)
    return tile.to(tl.float32)


@triton.jit
def _scatter_add(ptr, pix, chans, ok, vals, D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    tl.atomic_add(ptr + pix[:, None] + chans[None, :], vals, mask=_tile_mask(ok, chans, D, BLOCK_N, BLOCK_D),
                  sem="relaxed")


@triton.jit
def _level_geometry(shapes_ptr, start_ptr, lvl, INT64: tl.constexpr):
    """H, W (integers), H, W (float32) and the first flattened index of level ``lvl``."""
    H = tl.load(shapes_ptr + 2 * lvl)
    W = tl.load(shapes_ptr + 2 * lvl + 1)
    start = tl.load(start_ptr + lvl)
    if INT64:
        H = H.to(tl.int64)
        W = W.to(tl.int64)
        start = start.to(tl.int64)
    else:
        H = H.to(tl.int32)
        W = W.to(tl.int32)
        start = start.to(tl.int32)
    return H, W, H.to(tl.float32), W.to(tl.float32), start


@triton.jit
def _bilinear_corners(x, y, Hf, Wf, H, W, INT64: tl.constexpr):
    """Top-left corner, fractional offsets and the four corners' validity for a (BLOCK_N,) batch of points."""
    w_im = x * Wf - 0.5
    h_im = y * Hf - 0.5
    inside = (h_im > -1.0) & (w_im > -1.0) & (h_im < Hf) & (w_im < Wf)
    # Clamp before the float -> int conversion so that far-away points cannot
    # overflow; inside the map the clamp is the identity.
    w_im = tl.minimum(tl.maximum(w_im, -1.0), Wf)
    h_im = tl.minimum(tl.maximum(h_im, -1.0), Hf)
    h_floor = tl.floor(h_im)
    w_floor = tl.floor(w_im)
    lh = h_im - h_floor
    lw = w_im - w_floor
    if INT64:
        h0 = h_floor.to(tl.int64)
        w0 = w_floor.to(tl.int64)
    else:
        h0 = h_floor.to(tl.int32)
        w0 = w_floor.to(tl.int32)
    top = inside & (h0 >= 0)
    bottom = inside & (h0 + 1 <= H - 1)
    left = w0 >= 0
    right = w0 + 1 <= W - 1
    return h0, w0, lh, lw, top & left, top & right, bottom & left, bottom & right


@triton.jit
def _row_setup(BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, n_rows, rows_per_batch, S,
               M: tl.constexpr, D: tl.constexpr, INT64: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        rows = rows.to(tl.int64)
    row_ok = rows < n_rows
    chans = tl.arange(0, BLOCK_D)
    head = rows % M
    batch = rows // rows_per_batch
    # element offset of value[b, 0, m, 0]
    row_base = (batch * S * M + head) * D
    return rows, row_ok, chans, row_base


@triton.jit
def _msda_fwd_kernel(value_ptr, shapes_ptr, start_ptr, loc_ptr, attn_ptr, out_ptr,
                     n_rows, rows_per_batch, S,
                     M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INT64: tl.constexpr):
    rows, row_ok, chans, row_base = _row_setup(BLOCK_N, BLOCK_D, n_rows, rows_per_batch, S, M, D, INT64)
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    # A rolled loop over the L*P points: unrolled, the compiler hoists every gather of
    # every point and spills.
    for k in tl.range(0, L * P):
        lvl = k // P
        H, W, Hf, Wf, start = _level_geometry(shapes_ptr, start_ptr, lvl, INT64)
        lvl_base = row_base + start * (M * D)
        x = tl.load(loc_ptr + rows * (2 * L * P) + 2 * k, mask=row_ok, other=0.0).to(tl.float32)
        y = tl.load(loc_ptr + rows * (2 * L * P) + 2 * k + 1, mask=row_ok, other=0.0).to(tl.float32)
        a = tl.load(attn_ptr + rows * (L * P) + k, mask=row_ok, other=0.0).to(tl.float32)
        h0, w0, lh, lw, ok00, ok01, ok10, ok11 = _bilinear_corners(x, y, Hf, Wf, H, W, INT64)
        hh = 1.0 - lh
        hw = 1.0 - lw
        pix00 = lvl_base + (h0 * W + w0) * (M * D)
        pix10 = pix00 + W * (M * D)
        v00 = _gather(value_ptr, pix00, chans, ok00 & row_ok, D, BLOCK_N, BLOCK_D)
        v01 = _gather(value_ptr, pix00 + M * D, chans, ok01 & row_ok, D, BLOCK_N, BLOCK_D)
        v10 = _gather(value_ptr, pix10, chans, ok10 & row_ok, D, BLOCK_N, BLOCK_D)
        v11 = _gather(value_ptr, pix10 + M * D, chans, ok11 & row_ok, D, BLOCK_N, BLOCK_D)
        sample = ((hh * hw)[:, None] * v00 + (hh * lw)[:, None] * v01
                  + (lh * hw)[:, None] * v10 + (lh * lw)[:, None] * v11)
        acc += a[:, None] * sample
    tl.store(out_ptr + rows[:, None] * D + chans[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=_tile_mask(row_ok, chans, D, BLOCK_N, BLOCK_D))


@triton.jit
def _msda_bwd_kernel(value_ptr, shapes_ptr, start_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                     grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                     n_rows, rows_per_batch, S,
                     M: tl.constexpr, D: tl.constexpr, L: tl.constexpr, P: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, INT64: tl.constexpr,
                     GRAD_VALUE: tl.constexpr, GRAD_LOC: tl.constexpr, GRAD_ATTN: tl.constexpr,
                     LOAD_VALUES: tl.constexpr):
    rows, row_ok, chans, row_base = _row_setup(BLOCK_N, BLOCK_D, n_rows, rows_per_batch, S, M, D, INT64)
    go = _gather(grad_out_ptr, rows * D, chans, row_ok, D, BLOCK_N, BLOCK_D)
    for k in tl.range(0, L * P):
        lvl = k // P
        H, W, Hf, Wf, start = _level_geometry(shapes_ptr, start_ptr, lvl, INT64)
        lvl_base = row_base + start * (M * D)
        x = tl.load(loc_ptr + rows * (2 * L * P) + 2 * k, mask=row_ok, other=0.0).to(tl.float32)
        y = tl.load(loc_ptr + rows * (2 * L * P) + 2 * k + 1, mask=row_ok, other=0.0).to(tl.float32)
        a = tl.load(attn_ptr + rows * (L * P) + k, mask=row_ok, other=0.0).to(tl.float32)
        h0, w0, lh, lw, ok00, ok01, ok10, ok11 = _bilinear_corners(x, y, Hf, Wf, H, W, INT64)
        hh = 1.0 - lh
        hw = 1.0 - lw
        pix00 = lvl_base + (h0 * W + w0) * (M * D)
        pix10 = pix00 + W * (M * D)
        ok00 = ok00 & row_ok
        ok01 = ok01 & row_ok
        ok10 = ok10 & row_ok
        ok11 = ok11 & row_ok
        if LOAD_VALUES:  # GRAD_LOC or GRAD_ATTN
            v00 = _gather(value_ptr, pix00, chans, ok00, D, BLOCK_N, BLOCK_D)
            v01 = _gather(value_ptr, pix00 + M * D, chans, ok01, D, BLOCK_N, BLOCK_D)
            v10 = _gather(value_ptr, pix10, chans, ok10, D, BLOCK_N, BLOCK_D)
            v11 = _gather(value_ptr, pix10 + M * D, chans, ok11, D, BLOCK_N, BLOCK_D)
            if GRAD_ATTN:
                sample = ((hh * hw)[:, None] * v00 + (hh * lw)[:, None] * v01
                          + (lh * hw)[:, None] * v10 + (lh * lw)[:, None] * v11)
                g_attn = tl.sum(go * sample, axis=1)
                tl.store(grad_attn_ptr + rows * (L * P) + k, g_attn.to(grad_attn_ptr.dtype.element_ty),
                         mask=row_ok)
            if GRAD_LOC:
                # d sample / d w_im and d sample / d h_im, then the chain rule through
                # w_im = x * W - 0.5 and h_im = y * H - 0.5
                d_w = tl.sum(go * (hh[:, None] * (v01 - v00) + lh[:, None] * (v11 - v10)), axis=1)
                d_h = tl.sum(go * (hw[:, None] * (v10 - v00) + lw[:, None] * (v11 - v01)), axis=1)
                tl.store(grad_loc_ptr + rows * (2 * L * P) + 2 * k,
                         (d_w * a * Wf).to(grad_loc_ptr.dtype.element_ty), mask=row_ok)
                tl.store(grad_loc_ptr + rows * (2 * L * P) + 2 * k + 1,
                         (d_h * a * Hf).to(grad_loc_ptr.dtype.element_ty), mask=row_ok)
        if GRAD_VALUE:
            g = a[:, None] * go
            _scatter_add(grad_value_ptr, pix00, chans, ok00, (hh * hw)[:, None] * g, D, BLOCK_N, BLOCK_D)
            _scatter_add(grad_value_ptr, pix00 + M * D, chans, ok01, (hh * lw)[:, None] * g, D, BLOCK_N,
                         BLOCK_D)
            _scatter_add(grad_value_ptr, pix10, chans, ok10, (lh * hw)[:, None] * g, D, BLOCK_N, BLOCK_D)
            _scatter_add(grad_value_ptr, pix10 + M * D, chans, ok11, (lh * lw)[:, None] * g, D, BLOCK_N,
                         BLOCK_D)


_INT32_MAX = 2 ** 31 - 1


def default_config(channels: int, backward: bool = False) -> dict:
    """Launch parameters: (BLOCK_N rows) x (BLOCK_D channels) tiles of 1K elements, i.e. for D = 32
    two rows per thread as 128-bit accesses (about 60 registers forward, 64 backward on sm_90,
    no spills); ``benchmarks/msda.py --sweep`` times the alternatives."""
    block_d = triton.next_power_of_2(max(int(channels), 1))
    block_n = max(8, min(128, 1024 // block_d))
    return {"BLOCK_N": block_n, "num_warps": 8 if backward else 4}


def _check_inputs(value, spatial_shapes, sampling_locations, attention_weights):
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, M, D), got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (B, Lq, M, L, P, 2), got {tuple(sampling_locations.shape)}")
    B, S, M, D = value.shape
    b2, Lq, m2, L, P, _ = sampling_locations.shape
    if (b2, m2) != (B, M):
        raise ValueError("value and sampling_locations disagree on batch / heads: "
                         f"{tuple(value.shape)} vs {tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != (B, Lq, M, L, P):
        raise ValueError(f"attention_weights must be {(B, Lq, M, L, P)}, got {tuple(attention_weights.shape)}")
    if tuple(spatial_shapes.shape) != (L, 2):
        raise ValueError(f"spatial_shapes must be ({L}, 2), got {tuple(spatial_shapes.shape)}")
    return B, S, M, D, Lq, L, P


def _level_starts(spatial_shapes, level_start_index):
    if level_start_index is None:
        areas = spatial_shapes[:, 0] * spatial_shapes[:, 1]
        level_start_index = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return level_start_index


def _needs_int64(*tensors) -> bool:
    return any(t.numel() > _INT32_MAX // 2 for t in tensors)


def msda_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                 block_n=None, num_warps=None, force_int64=False):
    """Forward kernel launch; returns (B, Lq, M*D) in value's dtype."""
    B, S, M, D, Lq, L, P = _check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    value = value.contiguous()
    loc = sampling_locations.contiguous()
    attn = attention_weights.contiguous()
    shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
    starts = _level_starts(shapes, level_start_index).to(device=value.device, dtype=torch.int64).contiguous()
    out = torch.empty((B, Lq, M * D), device=value.device, dtype=value.dtype)
    n_rows = B * Lq * M
    if n_rows == 0 or D == 0:
        return out.zero_()
    cfg = default_config(D)
    block_n = block_n or cfg["BLOCK_N"]
    grid = (triton.cdiv(n_rows, block_n),)
    _msda_fwd_kernel[grid](
        value, shapes, starts, loc, attn, out, n_rows, Lq * M, S,
        M=M, D=D, L=L, P=P, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D),
        INT64=force_int64 or _needs_int64(value, loc, out), num_warps=num_warps or cfg["num_warps"])
    return out


def msda_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, grad_output,
                  needs_value=True, needs_loc=True, needs_attn=True, block_n=None, num_warps=None,
                  force_int64=False):
    """Backward kernel launch; returns (grad_value, grad_sampling_locations, grad_attention_weights)
    (None for the ones not requested)."""
    B, S, M, D, Lq, L, P = _check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    value = value.contiguous()
    loc = sampling_locations.contiguous()
    attn = attention_weights.contiguous()
    grad_output = grad_output.contiguous()
    shapes = spatial_shapes.to(device=value.device, dtype=torch.int64).contiguous()
    starts = _level_starts(shapes, level_start_index).to(device=value.device, dtype=torch.int64).contiguous()
    # grad_value is accumulated with float32 atomics whatever the input dtype.
    grad_value = torch.zeros(value.shape, device=value.device, dtype=torch.float32) if needs_value else None
    grad_loc = torch.empty_like(loc) if needs_loc else None
    grad_attn = torch.empty_like(attn) if needs_attn else None
    n_rows = B * Lq * M
    if n_rows > 0 and D > 0 and (needs_value or needs_loc or needs_attn):
        cfg = default_config(D, backward=True)
        block_n = block_n or cfg["BLOCK_N"]
        grid = (triton.cdiv(n_rows, block_n),)
        dummy = value  # never dereferenced when the matching flag is off
        _msda_bwd_kernel[grid](
            value, shapes, starts, loc, attn, grad_output,
            grad_value if needs_value else dummy, grad_loc if needs_loc else dummy,
            grad_attn if needs_attn else dummy,
            n_rows, Lq * M, S,
            M=M, D=D, L=L, P=P, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D),
            INT64=force_int64 or _needs_int64(value, loc, grad_output),
            GRAD_VALUE=needs_value, GRAD_LOC=needs_loc, GRAD_ATTN=needs_attn,
            LOAD_VALUES=needs_loc or needs_attn,
            num_warps=num_warps or cfg["num_warps"])
    elif n_rows == 0 or D == 0:
        if needs_loc:
            grad_loc.zero_()
        if needs_attn:
            grad_attn.zero_()
    if needs_value and grad_value.dtype != value.dtype:
        grad_value = grad_value.to(value.dtype)
    return grad_value, grad_loc, grad_attn


class MSDeformAttnTritonFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward, Triton backward (first-order only)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        starts = _level_starts(spatial_shapes, level_start_index)
        ctx.save_for_backward(value, spatial_shapes, starts, sampling_locations, attention_weights)
        return msda_forward(value, spatial_shapes, starts, sampling_locations, attention_weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, starts, loc, attn = ctx.saved_tensors
        needs_value, _, _, needs_loc, needs_attn = ctx.needs_input_grad
        grad_value, grad_loc, grad_attn = msda_backward(
            value, spatial_shapes, starts, loc, attn, grad_output,
            needs_value=needs_value, needs_loc=needs_loc, needs_attn=needs_attn)
        return grad_value, None, None, grad_loc, grad_attn


def ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Multi-scale deformable attention with the Triton kernels; same contract as the reference."""
    return MSDeformAttnTritonFunction.apply(value, spatial_shapes, level_start_index, sampling_locations,
                                            attention_weights)
