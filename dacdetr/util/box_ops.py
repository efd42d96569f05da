"""Bounding-box conversions and (generalised) IoU.

Boxes are either ``cxcywh`` (centre x, centre y, width, height) or ``xyxy``
(top-left / bottom-right corners). Pairwise functions take ``(N, 4)`` and
``(M, 4)`` xyxy tensors and return ``(N, M)`` matrices. Everything stays on
the input device and dtype.
"""
import torch

__all__ = [
    "box_cxcywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "masks_to_boxes",
]


def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    half_w = 0.5 * w
    half_h = 0.5 * h
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def box_xyxy_to_cxcywh(x):
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes):
    """Area of xyxy boxes, shape ``(..., 4) -> (...)``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU of xyxy boxes; returns ``(iou, union)``, both ``(N, M)``."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union, union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise generalised IoU (Rezatofighi et al. 2019) of xyxy boxes, ``(N, M)``.

    Degenerate boxes (x1 < x0 or y1 < y0) would give inf/nan, so they are rejected.
    """
    if not bool((boxes1[:, 2:] >= boxes1[:, :2]).all()):
        raise ValueError("generalized_box_iou: boxes1 has degenerate boxes (x1<x0 or y1<y0)")
    if not bool((boxes2[:, 2:] >= boxes2[:, :2]).all()):
        raise ValueError("generalized_box_iou: boxes2 has degenerate boxes (x1<x0 or y1<y0)")
    iou, union = box_iou(boxes1, boxes2)
    enc_tl = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enc_br = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enc_wh = (enc_br - enc_tl).clamp(min=0)
    enclosing = enc_wh[..., 0] * enc_wh[..., 1]
    return iou - (enclosing - union) / enclosing


def elementwise_box_iou(boxes1, boxes2):
    """IoU of matching rows of two ``(N, 4)`` xyxy tensors; returns ``(iou, union)`` of shape ``(N,)``."""
    top_left = torch.max(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def elementwise_generalized_box_iou(boxes1, boxes2):
    """GIoU of matching rows; equals ``torch.diag(generalized_box_iou(b1, b2))`` without the N x N matrix."""
    iou, union = elementwise_box_iou(boxes1, boxes2)
    enc_tl = torch.min(boxes1[:, :2], boxes2[:, :2])
    enc_br = torch.max(boxes1[:, 2:], boxes2[:, 2:])
    enc_wh = (enc_br - enc_tl).clamp(min=0)
    enclosing = enc_wh[:, 0] * enc_wh[:, 1]
    return iou - (enclosing - union) / enclosing


def masks_to_boxes(masks):
    """Tight xyxy boxes around ``(N, H, W)`` binary masks (pixel indices, inclusive)."""
    if masks.numel() == 0:
        return torch.zeros((0, 4), device=masks.device)
    h, w = masks.shape[-2:]
    ys = torch.arange(h, dtype=torch.float, device=masks.device)
    xs = torch.arange(w, dtype=torch.float, device=masks.device)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    m = masks.bool()
    big = torch.tensor(1e8, device=masks.device)
    x_max = (m * xx).flatten(1).max(-1).values
    x_min = torch.where(m, xx, big).flatten(1).min(-1).values
    y_max = (m * yy).flatten(1).max(-1).values
    y_min = torch.where(m, yy, big).flatten(1).min(-1).values
    return torch.stack([x_min, y_min, x_max, y_max], 1)
