"""Framework primitives of the Paddle port: padded image batches, box geometry, the inverse sigmoid and
the multi-scale deformable attention core written with ``paddle.nn.functional.grid_sample``."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

__all__ = [
    "NestedTensor",
    "nested_tensor_from_tensor_list",
    "clamp",
    "inverse_sigmoid",
    "box_cxcywh_to_xyxy",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "ms_deform_attn_core",
]


class NestedTensor:
    """A batch of images ``tensors`` (B, C, H, W) and its padding ``mask`` (B, H, W), True on padding."""

    def __init__(self, tensors, mask):
        self.tensors = tensors
        self.mask = mask

    def decompose(self):
        return self.tensors, self.mask

    def __repr__(self):
        return f"NestedTensor(tensors={list(self.tensors.shape)}, mask={None if self.mask is None else list(self.mask.shape)})"


def nested_tensor_from_tensor_list(images) -> NestedTensor:
    """Pad (C, H, W) images (a list, or a (B, C, H, W) tensor) into the top-left corner of a zero batch of
    the largest size; the mask is False on image pixels and True on the padding."""
    if isinstance(images, paddle.Tensor):
        if images.ndim != 4:
            raise ValueError("nested_tensor_from_tensor_list expects (B, C, H, W) or a list of (C, H, W)")
        b, _, h, w = images.shape
        return NestedTensor(images, paddle.zeros([b, h, w], dtype="bool"))
    images = list(images)
    if not images or images[0].ndim != 3:
        raise ValueError("nested_tensor_from_tensor_list expects (C, H, W) images")
    c = max(int(im.shape[0]) for im in images)
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    batch, masks = [], []
    for im in images:
        ci, hi, wi = (int(s) for s in im.shape)
        batch.append(F.pad(im[None], [0, w - wi, 0, h - hi], value=0.0, data_format="NCHW")[0]
                     if (hi, wi) != (h, w) else im)
        m = np.ones((h, w), dtype=bool)
        m[:hi, :wi] = False
        masks.append(m)
        if ci != c:
            raise ValueError("all images need the same number of channels")
    return NestedTensor(paddle.stack(batch), paddle.to_tensor(np.stack(masks)))


def clamp(x, min=None, max=None):
    """``paddle.clip`` whose gradient is zero *at* the bounds as well as beyond them (PyTorch's
    ``clamp`` convention; ``paddle.clip`` passes the gradient at the bounds). Matters where values sit
    exactly on a bound, e.g. saturated sigmoids (1.0 in float32) in ``inverse_sigmoid``."""
    inside = None
    if min is not None:
        inside = x > min
    if max is not None:
        below = x < max
        inside = below if inside is None else paddle.logical_and(inside, below)
    clipped = paddle.clip(x, min=min, max=max).detach()
    return paddle.where(inside, x, clipped)


def inverse_sigmoid(x, eps: float = 1e-5):
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms floored at ``eps``."""
    x = clamp(x, 0.0, 1.0)
    return paddle.log(clamp(x, min=eps) / clamp(1 - x, min=eps))


def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = paddle.unbind(x, axis=-1)
    return paddle.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU (N, M) of xyxy boxes, and the union."""
    area1, area2 = box_area(boxes1), box_area(boxes2)
    lt = paddle.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = paddle.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = clamp(rb - lt, min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalised IoU (N, M) of xyxy boxes (degenerate boxes are rejected)."""
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()) or not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError("generalized_box_iou: degenerate boxes (x1<x0 or y1<y0)")
    iou, union = box_iou(boxes1, boxes2)
    lt = paddle.minimum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = paddle.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = clamp(rb - lt, min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def elementwise_box_iou(boxes1, boxes2):
    lt = paddle.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = paddle.minimum(boxes1[:, 2:], boxes2[:, 2:])
    wh = clamp(rb - lt, min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def elementwise_generalized_box_iou(boxes1, boxes2):
    iou, union = elementwise_box_iou(boxes1, boxes2)
    lt = paddle.minimum(boxes1[:, :2], boxes2[:, :2])
    rb = paddle.maximum(boxes1[:, 2:], boxes2[:, 2:])
    wh = clamp(rb - lt, min=0)
    enclosing = wh[:, 0] * wh[:, 1]
    return iou - (enclosing - union) / enclosing


def ms_deform_attn_core(value, spatial_shapes: Sequence, sampling_locations, attention_weights):
    """Multi-scale deformable attention: bilinear samples of every level, weighted and summed.

    value (B, S, M, D) with S = sum H_l W_l; spatial_shapes: L pairs [H_l, W_l] (python ints);
    sampling_locations (B, Lq, M, L, P, 2) normalised (x, y), outside [0, 1] reads zeros;
    attention_weights (B, Lq, M, L, P). Returns (B, Lq, M * D).
    Each level is sampled with ``grid_sample(bilinear, zeros padding, align_corners=False)`` at
    ``2 * loc - 1``, i.e. pixel coordinates ``x * W_l - 0.5``.
    """
    b, _, m, d = value.shape
    _, lq, _, num_levels, num_points, _ = sampling_locations.shape
    sizes: List = [(int(h), int(w)) for h, w in spatial_shapes]
    if len(sizes) != num_levels:
        raise ValueError(f"{len(sizes)} spatial shapes for {num_levels} sampling levels")
    per_level = paddle.split(value, [h * w for h, w in sizes], axis=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(sizes):
        # (B, HW, M, D) -> (B, M, D, HW) -> (B*M, D, H, W)
        v = per_level[lvl].transpose([0, 2, 3, 1]).reshape([b * m, d, h, w])
        # (B, Lq, M, P, 2) -> (B, M, Lq, P, 2) -> (B*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose([0, 2, 1, 3, 4]).reshape([b * m, lq, num_points, 2])
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B, Lq, M, L, P) -> (B, M, Lq, L, P) -> (B*M, 1, Lq, L*P)
    weights = attention_weights.transpose([0, 2, 1, 3, 4]).reshape([b * m, 1, lq, num_levels * num_points])
    out = (paddle.stack(sampled, axis=-2).flatten(-2) * weights).sum(-1)  # (B*M, D, Lq)
    return out.reshape([b, m * d, lq]).transpose([0, 2, 1])
