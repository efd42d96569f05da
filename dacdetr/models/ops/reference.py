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

__all__ = ["ms_deform_attn_core_pytorch"]


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
