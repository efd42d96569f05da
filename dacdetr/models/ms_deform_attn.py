"""Multi-scale deformable attention module (Deformable DETR), as used by DAC-DETR.

Every query predicts, for each head ``m``, level ``l`` and point ``p``, a sampling offset and an
attention weight (softmax over the ``L * P`` samples of a head). Samples are read from the
value maps by bilinear interpolation. The sampling/aggregation kernel is
:func:`dacdetr.models.ops.ms_deform_attn` (Triton on CUDA, pure PyTorch elsewhere).
"""
from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .ops import ms_deform_attn

__all__ = ["MSDeformAttn", "fp32_under_autocast"]


def _cast_fp32(obj, device_type):
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.device.type == device_type and obj.dtype != torch.float64:
            return obj.float()
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cast_fp32(o, device_type) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast_fp32(v, device_type) for k, v in obj.items()}
    return obj


def fp32_under_autocast(fn):
    """Run a module's ``forward`` in float32 when CUDA autocast is active (inputs cast, autocast
    off inside), and unchanged otherwise. Mirrors ``custom_fwd(cast_inputs=torch.float32)``."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if torch.is_autocast_enabled("cuda"):
            with torch.autocast(device_type="cuda", enabled=False):
                return fn(self, *_cast_fp32(args, "cuda"), **_cast_fp32(kwargs, "cuda"))
        return fn(self, *args, **kwargs)

    return wrapper


class MSDeformAttn(nn.Module):
    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, but got {d_model} and {n_heads}")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn("a power-of-2 head dimension (d_model / n_heads) is the efficient case for the kernel")
        self.im2col_step = 64
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        """Offsets start on a star: head ``m`` points in direction 2*pi*m/M (scaled so the larger
        coordinate is 1), point ``p`` at distance ``p + 1``; uniform attention; Xavier projections."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angle = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        star = torch.stack([angle.cos(), angle.sin()], -1)
        star = star / star.abs().max(-1, keepdim=True)[0]
        star = star.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        star = star * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias = nn.Parameter(star.reshape(-1).to(self.sampling_offsets.weight.device))
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    @fp32_under_autocast
    def forward(self, query, reference_points, input_flatten, input_spatial_shapes, input_level_start_index,
                input_padding_mask=None):
        """
        query (B, Lq, C); reference_points (B, Lq, L, 2) normalised points or (B, Lq, L, 4) boxes
        (cx, cy, w, h); input_flatten (B, S, C) with S = sum_l H_l W_l; input_spatial_shapes (L, 2)
        long [H, W] (or a sequence of (H, W) integer pairs: what torch.compile / export need);
        input_level_start_index (L,); input_padding_mask (B, S) True on padding.
        Returns (B, Lq, C).
        """
        n, len_q, _ = query.shape
        _, len_in, _ = input_flatten.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], float(0))
        value = value.view(n, len_in, heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(n, len_q, heads, levels, points, 2)
        weights = self.attention_weights(query).view(n, len_q, heads, levels * points)
        weights = F.softmax(weights, -1).view(n, len_q, heads, levels, points)
        if reference_points.shape[-1] == 2:
            # offsets are in pixels of each level: normalise by (W_l, H_l)
            if isinstance(input_spatial_shapes, torch.Tensor):
                normalizer = torch.stack([input_spatial_shapes[..., 1], input_spatial_shapes[..., 0]], -1)
            else:  # (H, W) integer pairs: the same values as a constant, in the offsets' dtype (exact)
                normalizer = torch.tensor([(w, h) for h, w in input_spatial_shapes], dtype=offsets.dtype,
                                          device=offsets.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            # offsets are relative to the reference box: half its size per unit of n_points
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / points * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"Last dim of reference_points must be 2 or 4, but get {reference_points.shape[-1]} instead.")
        out = ms_deform_attn(value, input_spatial_shapes, input_level_start_index, locations, weights,
                             self.im2col_step)
        return self.output_proj(out)
