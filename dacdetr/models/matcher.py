"""One-to-one Hungarian matching between predictions and ground truth.

The matching cost is a weighted sum of a focal-style classification cost, the L1
distance between cxcywh boxes and the negative generalised IoU (Deformable-DETR
flavour, as used by DAC-DETR for the O-decoder and the encoder proposals).
"""
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from dacdetr.util.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

__all__ = ["HungarianMatcher", "build_matcher", "focal_class_cost"]


def focal_class_cost(prob, tgt_ids, alpha=0.25, gamma=2.0, eps=1e-8):
    """Focal-loss matching cost, ``(N, C)`` probabilities -> ``(N, len(tgt_ids))``.

    cost = alpha (1-p)^gamma (-log(p+eps)) - (1-alpha) p^gamma (-log(1-p+eps)),
    evaluated at each target's class.
    """
    p = prob[:, tgt_ids]
    pos = alpha * (1 - p) ** gamma * (-(p + eps).log())
    neg = (1 - alpha) * p ** gamma * (-(1 - p + eps).log())
    return pos - neg


class HungarianMatcher(nn.Module):
    """Optimal one-to-one assignment of ``num_gt`` targets to ``num_queries`` predictions per image.

    Args:
        cost_class, cost_bbox, cost_giou: weights of the three cost terms (not all zero).
        focal_alpha, focal_gamma: parameters of the focal classification cost.
    """

    def __init__(self, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, logits, boxes, tgt_ids, tgt_boxes):
        """Cost between ``(N, C)`` logits / ``(N, 4)`` boxes and ``M`` targets -> ``(N, M)``."""
        prob = logits.sigmoid()
        c_cls = focal_class_cost(prob, tgt_ids, self.focal_alpha, self.focal_gamma)
        c_l1 = torch.cdist(boxes, tgt_boxes, p=1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
        return self.cost_bbox * c_l1 + self.cost_class * c_cls + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, outputs, targets, onetone=True):
        """Match predictions to targets.

        Args:
            outputs: dict with ``pred_logits`` (B, Q, C) and ``pred_boxes`` (B, Q, 4, cxcywh); with
                ``onetone=False`` the ``pred_logits_cdecoder`` / ``pred_boxes_cdecoder`` entries are used.
            targets: list of B dicts with ``labels`` (M_b,) int64 and ``boxes`` (M_b, 4) cxcywh.

        Returns:
            list of B ``(query_idx, target_idx)`` int64 tensor pairs (query_idx ascending), each of
            length ``min(Q, M_b)``, on the device of the predictions.
        """
        suffix = "" if onetone else "_cdecoder"
        logits = outputs["pred_logits" + suffix]
        boxes = outputs["pred_boxes" + suffix]
        bs, num_queries = logits.shape[:2]
        device = logits.device

        tgt_ids = torch.cat([t["labels"] for t in targets]).to(device)
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).to(device=device, dtype=boxes.dtype)
        cost = self.cost_matrix(logits.flatten(0, 1), boxes.flatten(0, 1), tgt_ids, tgt_boxes)
        cost = cost.view(bs, num_queries, -1).cpu()

        sizes = [len(t["boxes"]) for t in targets]
        result = []
        for b, block in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(block[b].numpy())
            result.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=device),
                    torch.as_tensor(cols, dtype=torch.int64, device=device),
                )
            )
        return result


def build_matcher(args):
    return HungarianMatcher(
        cost_class=args.set_cost_class,
        cost_bbox=args.set_cost_bbox,
        cost_giou=args.set_cost_giou,
    )
