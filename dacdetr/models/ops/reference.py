"""Pure-PyTorch multi-scale deformable attention core.

This is the reference implementation of the sampling/aggregation step of
MSDeformAttn (Deformable DETR, used unchanged by DAC-DETR).  It follows the
exact operation order of the official fallback so that float64 results are
bit-identical to it:

1. for every level, view the value map as ``(B*M, D, H, W)`` and sample it with
   ``F.grid_sample`` (bilinear, zero padding, ``align_corners=False``) at the
   grid ``2 * loc - 1``  ->  ``(B*M, D, Lq, P)``;
2. stack the per-level samples on a new level axis and flatten (level, point);
3. multiply by the attention weights laid out as ``(B*M, 1, Lq, L*P)``;
4. sum over (level, point) and bring the result to ``(B, Lq, M*D)``.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_core_pytorch", "ms_deform_attn_backward_pytorch"]


def _level_sizes(value_spatial_shapes: Union[torch.Tensor, Sequence]) -> list:
    """Turn an (L, 2) tensor / nested sequence of [H, W] into a list of python int pairs."""
    if isinstance(value_spatial_shapes, torch.Tensor):
        value_spatial_shapes = value_spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in value_spatial_shapes]


def ms_deform_attn_core_pytorch(value: torch.Tensor,
                                value_spatial_shapes: Union[torch.Tensor, Sequence],
                                sampling_locations: torch.Tensor,
                                attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention with ``torch.nn.functional.grid_sample``.

    Args:
        value: ``(B, S, M, D)`` flattened multi-level value maps, ``S = sum_l H_l * W_l``.
        value_spatial_shapes: ``(L, 2)`` long tensor (or sequence) of ``[H_l, W_l]``.
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalised ``(x, y)`` in ``[0, 1]``
            (values outside sample zeros).
        attention_weights: ``(B, Lq, M, L, P)``.

    Returns:
        ``(B, Lq, M * D)`` tensor.
    """
    batch, _, heads, channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = _level_sizes(value_spatial_shapes)
    if len(sizes) != num_levels:
        raise ValueError(f"value_spatial_shapes has {len(sizes)} levels but "
                         f"sampling_locations has {num_levels}")
    per_level = torch.split(value, [h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(sizes):
        # (B, HW, M, D) -> (B, HW, M*D) -> (B, M*D, HW) -> (B*M, D, H, W)
        v = per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, channels, height, width)
        # (B, Lq, M, P, 2) -> (B, M, Lq, P, 2) -> (B*M, Lq, P, 2)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        # (B*M, D, Lq, P)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Lq, M, L, P) -> (B, M, Lq, L, P) -> (B*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1)
    out = out.view(batch, heads * channels, num_queries)
    return out.transpose(1, 2).contiguous()


def ms_deform_attn_backward_pytorch(value: torch.Tensor,
                                    value_spatial_shapes: Union[torch.Tensor, Sequence],
                                    sampling_locations: torch.Tensor,
                                    attention_weights: torch.Tensor,
                                    grad_output: torch.Tensor,
                                    needs=(True, True, True)):
    """Gradients of :func:`ms_deform_attn_core_pytorch` w.r.t. ``(value, sampling_locations, attention_weights)``
    written out with ``grid_sample``'s own backward (what autograd computes through the reference, without
    needing autograd: usable inside a custom op). ``needs`` selects the gradients; the others are None."""
    needs_value, needs_loc, needs_attn = needs
    batch, _, heads, channels = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = _level_sizes(value_spatial_shapes)
    per_level = torch.split(value, [h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1
    maps = [per_level[level].flatten(2).transpose(1, 2).reshape(batch * heads, channels, h, w)
            for level, (h, w) in enumerate(sizes)]
    level_grids = [grids[:, :, :, level].transpose(1, 2).flatten(0, 1) for level in range(num_levels)]
    # (B, Lq, M*D) -> (B*M, D, Lq, 1): the broadcast of the sum over (level, point)
    go = grad_output.transpose(1, 2).reshape(batch * heads, channels, num_queries, 1)
    grad_attn = None
    if needs_attn:
        sampled = [F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
                   for v, g in zip(maps, level_grids)]
        stacked = torch.stack(sampled, dim=-2).flatten(-2)
        grad_w = (go * stacked).sum(1)  # (B*M, Lq, L*P)
        grad_attn = grad_w.view(batch, heads, num_queries, num_levels, num_points).transpose(1, 2).contiguous()
    grad_value = grad_loc = None
    if needs_value or needs_loc:
        weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
        grad_stacked = (go * weights).view(batch * heads, channels, num_queries, num_levels, num_points)
        value_parts, loc_parts = [], []
        for level, (h, w) in enumerate(sizes):
            g_in, g_grid = torch.ops.aten.grid_sampler_2d_backward(
                grad_stacked[:, :, :, level].contiguous(), maps[level], level_grids[level], 0, 0, False,
                [needs_value, needs_loc])
            if needs_value:  # (B*M, D, H, W) -> (B, HW, M, D)
                value_parts.append(g_in.reshape(batch, heads * channels, h * w).transpose(1, 2)
                                   .reshape(batch, h * w, heads, channels))
            if needs_loc:  # (B*M, Lq, P, 2) -> (B, Lq, M, P, 2); d grid / d loc = 2
                loc_parts.append(g_grid.view(batch, heads, num_queries, num_points, 2).transpose(1, 2))
        if needs_value:
            grad_value = torch.cat(value_parts, 1)
        if needs_loc:
            grad_loc = (torch.stack(loc_parts, dim=3) * 2).contiguous()
    return grad_value, grad_loc, grad_attn
