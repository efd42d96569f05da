"""Convert DAC-DETR outputs into COCO-style detections.

:class:`NMSPostProcess` is what DAC-DETR evaluates with: all ``queries x classes``
sigmoid scores compete, the best 10000 go through class-wise NMS (IoU 0.8) and the
first 300 survivors are kept. :class:`PostProcess` is the plain Deformable-DETR top-k.
Boxes come back as absolute xyxy in the size given by ``target_sizes`` (h, w).
"""
import torch
from torch import nn
from torchvision.ops import batched_nms

from dacdetr.util.box_ops import box_cxcywh_to_xyxy

__all__ = ["NMSPostProcess", "PostProcess"]


def _scaled_xyxy(pred_boxes, target_sizes):
    img_h, img_w = target_sizes.unbind(1)
    scale = torch.stack([img_w, img_h, img_w, img_h], dim=1).to(pred_boxes)
    return box_cxcywh_to_xyxy(pred_boxes) * scale[:, None, :]


def _check(logits, target_sizes):
    if len(logits) != len(target_sizes) or target_sizes.dim() != 2 or target_sizes.shape[1] != 2:
        raise ValueError("target_sizes must be (batch, 2) with one (h, w) per image")


class NMSPostProcess(nn.Module):
    """Top-``pre_topk`` over all (query, class) scores, class-wise NMS, keep ``keep``."""

    def __init__(self, pre_topk=10000, iou_threshold=0.8, keep=300):
        super().__init__()
        self.pre_topk = pre_topk
        self.iou_threshold = iou_threshold
        self.keep = keep

    @torch.no_grad()
    def forward(self, outputs, target_sizes):
        """``outputs``: ``pred_logits`` (B, Q, C), ``pred_boxes`` (B, Q, 4) cxcywh in [0, 1];
        ``target_sizes``: (B, 2) (h, w). Returns a list of B dicts (scores, labels, boxes)."""
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        _check(logits, target_sizes)
        bs, num_queries, num_classes = logits.shape
        scores = logits.sigmoid().reshape(bs, num_queries * num_classes)
        boxes = _scaled_xyxy(boxes, target_sizes)
        k = min(self.pre_topk, num_queries * num_classes)
        results = []
        for b in range(bs):
            top = scores[b].topk(k).indices
            s = scores[b][top]
            query = torch.div(top, num_classes, rounding_mode="floor")
            label = top % num_classes
            box = boxes[b][query]
            keep = batched_nms(box, s, label, self.iou_threshold)[: self.keep]
            results.append({"scores": s[keep], "labels": label[keep], "boxes": box[keep]})
        return results


class PostProcess(nn.Module):
    """Plain top-``topk`` over all (query, class) sigmoid scores, no NMS."""

    def __init__(self, topk=300):
        super().__init__()
        self.topk = topk

    @torch.no_grad()
    def forward(self, outputs, target_sizes):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        _check(logits, target_sizes)
        bs, num_queries, num_classes = logits.shape
        prob = logits.sigmoid().reshape(bs, -1)
        k = min(self.topk, prob.shape[1])
        scores, idx = prob.topk(k, dim=1)
        query = torch.div(idx, num_classes, rounding_mode="floor")
        labels = idx % num_classes
        boxes = torch.gather(_scaled_xyxy(boxes, target_sizes), 1, query.unsqueeze(-1).expand(-1, -1, 4))
        return [{"scores": s, "labels": l, "boxes": bx} for s, l, bx in zip(scores, labels, boxes)]
