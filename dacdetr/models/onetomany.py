"""One-to-many label assignment for the C-decoder (DETA-style IoU assigner).

Per image a quality matrix ``0.7 * IoU(pred_box, gt) + 0.3 * p(gt class)`` is built;
queries whose best quality reaches 0.4 (plus each gt's best query) become positive
candidates; at most ``0.25 * num_queries`` of them are kept at random; finally every
gt with ``c`` sampled candidates is given its top-``min(c, max_k)`` queries by quality.
All tensors stay on the device of the predictions; the random subsampling draws from
the global CPU generator (``torch.randperm``) so runs are reproducible under
``torch.manual_seed`` on any device.
"""
import torch
from torch import nn

from dacdetr.util.box_ops import box_cxcywh_to_xyxy, box_iou

__all__ = ["Matcher", "subsample_labels", "sample_topk", "Stage2Assigner"]


class Matcher:
    """Threshold matcher over a ``(num_gt, num_pred)`` quality matrix (detectron2 semantics).

    Each prediction takes its best gt; its label is ``labels[i]`` for the interval
    ``[thresholds[i-1], thresholds[i])`` its best quality falls into (with -inf / +inf
    added at the ends). With ``allow_low_quality_matches`` the single best prediction
    of every gt (``topk(1)``) is labelled 1 as well, keeping its own argmax gt.
    Labels: 1 positive, 0 negative, -1 ignore.
    """

    def __init__(self, thresholds, labels, allow_low_quality_matches=False):
        thresholds = list(thresholds)
        if thresholds[0] <= 0:
            raise ValueError("Matcher: thresholds must be positive")
        if any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher: thresholds must be sorted, got {thresholds}")
        if any(lab not in (-1, 0, 1) for lab in labels):
            raise ValueError("Matcher: labels must be in {-1, 0, 1}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError("Matcher: need len(thresholds) + 1 labels")
        self.thresholds = [-float("inf")] + thresholds + [float("inf")]
        self.labels = list(labels)
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, quality):
        """``quality`` (M gt, N pred), all entries >= 0 -> (matches (N,) int64, match_labels (N,) int8)."""
        if quality.dim() != 2:
            raise ValueError("Matcher expects a 2-d quality matrix")
        num_pred = quality.shape[1]
        if quality.numel() == 0:
            matches = torch.zeros(num_pred, dtype=torch.int64, device=quality.device)
            match_labels = torch.full((num_pred,), self.labels[0], dtype=torch.int8, device=quality.device)
            return matches, match_labels
        if not bool((quality >= 0).all()):
            raise ValueError("Matcher: quality matrix must be non-negative")

        best_val, matches = quality.max(dim=0)
        match_labels = torch.ones(num_pred, dtype=torch.int8, device=quality.device)
        for lab, lo, hi in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(best_val >= lo) & (best_val < hi)] = lab
        if self.allow_low_quality_matches:
            best_pred_per_gt = quality.topk(k=1, dim=1).indices.flatten()
            match_labels[best_pred_per_gt] = 1
        return matches, match_labels


def subsample_labels(labels, num_samples, positive_fraction, bg_label):
    """Random positive / negative subset (detectron2 semantics).

    ``labels`` (N,): -1 ignore, ``bg_label`` negative, anything else positive. Keeps
    ``min(#pos, int(num_samples * positive_fraction))`` positives and fills up to
    ``num_samples`` with negatives. The permutations come from the global CPU generator.
    Returns ``(pos_idx, neg_idx)`` on the device of ``labels``.
    """
    positive = torch.nonzero((labels != -1) & (labels != bg_label), as_tuple=True)[0]
    negative = torch.nonzero(labels == bg_label, as_tuple=True)[0]
    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)
    perm_pos = torch.randperm(positive.numel())[:num_pos].to(labels.device)
    perm_neg = torch.randperm(negative.numel())[:num_neg].to(labels.device)
    return positive[perm_pos], negative[perm_neg]


def sample_topk(pr_inds, gt_inds, quality, k):
    """Replace sampled positives by each gt's best queries.

    For every gt that appears ``c`` times in ``gt_inds``, return its top-``min(c, k)``
    queries by ``quality`` (M gt, N pred) in descending order; gts in ascending order.
    A query can be returned for several gts.
    """
    if len(gt_inds) == 0:
        return pr_inds, gt_inds
    gts, counts = gt_inds.unique(return_counts=True)
    kk = min(k, quality.shape[1])
    top_pr = quality[gts].topk(kk, dim=1).indices
    keep = [min(int(c), kk) for c in counts.tolist()]
    out_pr = torch.cat([row[:n] for row, n in zip(top_pr, keep)])
    out_gt = torch.cat([g.repeat(n) for g, n in zip(gts, keep)])
    return out_pr, out_gt


class Stage2Assigner(nn.Module):
    """One-to-many assigner applied to each decoder layer of the C-decoder.

    Args:
        num_queries: samples per image for :func:`subsample_labels` (the official criterion
            hard-codes 300 even with 900 queries, giving at most 75 positives).
        max_k: most queries per gt.
    """

    def __init__(self, num_queries=300, max_k=6):
        super().__init__()
        self.positive_fraction = 0.25
        self.bg_label = 400  # above any class id; marks background
        self.batch_size_per_image = num_queries
        self.proposal_matcher = Matcher(thresholds=[0.4], labels=[0, 1], allow_low_quality_matches=True)
        self.k = max_k

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        if gt_classes.numel() > 0:
            cls = gt_classes[matched_idxs]
            cls[matched_labels == 0] = self.bg_label
            cls[matched_labels == -1] = -1
        else:
            cls = torch.full_like(matched_idxs, self.bg_label)
        fg, bg = subsample_labels(cls, self.batch_size_per_image, self.positive_fraction, self.bg_label)
        sampled = torch.cat([fg, bg], dim=0)
        return sampled, cls[sampled]

    @torch.no_grad()
    def get_cost_matrix(self, pred_logits, pred_boxes, gt_classes, gt_boxes):
        """Quality (M gt, N pred) = 0.7 IoU + 0.3 sigmoid score of the gt class, and the IoU (M, N)."""
        num_queries = len(pred_logits)
        iou = box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes.to(pred_boxes)))[0]
        score = pred_logits.sigmoid()[:, gt_classes]
        quality = 0.7 * iou + 0.3 * score
        return quality.view(num_queries, -1).T, iou.view(num_queries, -1).T

    @torch.no_grad()
    def forward(self, outputs, targets, return_cost_matrix=False):
        """Assign queries to targets image by image.

        Uses ``outputs['pred_logits_cdecoder']`` (C-decoder scores) and ``outputs['pred_boxes']``
        (O-decoder boxes), as the official code does. Returns ``(indices, mats)``: indices is a
        list of ``(query_idx, gt_idx)`` pairs; mats are the (N, M) IoU matrices (or the quality
        matrices with ``return_cost_matrix=True``).
        """
        indices, qualities, ious = [], [], []
        for b, tgt in enumerate(targets):
            logits = outputs["pred_logits_cdecoder"][b].detach()
            boxes = outputs["pred_boxes"][b].detach()
            gt_classes = tgt["labels"].to(logits.device)
            quality, iou = self.get_cost_matrix(logits, boxes, gt_classes, tgt["boxes"].to(boxes.device))
            matched_idxs, matched_labels = self.proposal_matcher(quality)
            sampled, sampled_cls = self._sample_proposals(matched_idxs, matched_labels, gt_classes)
            pos_pr = sampled[sampled_cls != self.bg_label]
            pos_gt = matched_idxs[pos_pr]
            pos_pr, pos_gt = sample_topk(pos_pr, pos_gt, quality, self.k)
            indices.append((pos_pr, pos_gt))
            qualities.append(quality.T)
            ious.append(iou.T)
        return indices, (qualities if return_cost_matrix else ious)
