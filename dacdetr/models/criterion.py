"""DAC-DETR training criterion.

Branches (all decoder layers: final + auxiliary ``_{i}``):

* C-decoder, one-to-many (:class:`Stage2Assigner`): ``loss_ce`` (IA-BCE), ``loss_bbox``,
  ``loss_giou`` with rank-decayed weights, normalised by the number of boxes of the
  3x repeated ``balance_targets``;
* O-decoder, one-to-one (Hungarian): ``*_one2one``, normalised by the number of gt boxes;
* contrastive denoising: C-decoder ``*_dn``, O-decoder ``*_dn_one2one``, positive queries
  only, normalised by ``num_gt * num_dn_groups``;
* encoder proposals: class-agnostic Hungarian matching, sigmoid focal loss + L1 + GIoU
  (``*_enc``).

``cardinality_error*`` and ``class_error`` are logged but carry no weight.
"""
import torch
import torch.nn.functional as F
from torch import nn

from common import distributed as cdist
from dacdetr.models.matcher import build_matcher
from dacdetr.models.onetomany import Stage2Assigner
from dacdetr.models.postprocess import NMSPostProcess
from dacdetr.util import box_ops
from dacdetr.util.misc import accuracy

__all__ = [
    "SetCriterion",
    "weighted_total",
    "build_criterion",
    "build_weight_dict",
    "ia_bce_loss",
    "sigmoid_focal_loss",
    "local_rank_one2one",
    "local_rank_one2many",
]

RANK_TAU = 1.5


# ----------------------------------------------------------------------------- helpers
def _dist_mean_count(count, device):
    """Box count summed over ranks, divided by the world size, clamped at 1; returns a float."""
    t = torch.as_tensor([float(count)], dtype=torch.float, device=device)
    t = cdist.all_reduce_sum(t)
    return torch.clamp(t / cdist.get_world_size(), min=1).item()


def _top1_accuracy(logits, target):
    """Top-1 accuracy in percent (0 for an empty target)."""
    return accuracy(logits, target, (1,))[0]


def _src_permutation_idx(indices):
    batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    src_idx = torch.cat([src for src, _ in indices])
    return batch_idx, src_idx


def local_rank_one2one(quality, indices):
    """Rank of each matched query's quality inside its gt's bag, one-to-one case.

    The official routine reshapes each image's qualities into ``(num_gt, bag)`` with
    ``bag = matched // (max gt index + 1)``; with one query per gt every rank is 0.
    """
    ranks = []
    start = 0
    for _, gt in indices:
        n = len(gt)
        if n == 0:
            ranks.append(torch.zeros(0, dtype=torch.long, device=quality.device))
            continue
        q = quality[start:start + n]
        start += n
        num_tgt = int(gt.max()) + 1
        bag = n // num_tgt
        q = q.reshape(num_tgt, bag)
        order = q.sort(dim=-1, descending=True, stable=True).indices
        r = torch.zeros_like(order)
        r.scatter_(-1, order, torch.arange(bag, device=quality.device).repeat(num_tgt, 1))
        ranks.append(r.flatten())
    return torch.cat(ranks, 0)


def local_rank_one2many(quality, indices):
    """Rank (0 = best) of each positive's quality among the positives of the same gt.

    ``quality`` is the flat (sum of positives,) vector in ``indices`` order. Ties keep the
    order of appearance (stable sort).
    """
    ranks = []
    start = 0
    for _, gt in indices:
        n = len(gt)
        r = torch.zeros(n, dtype=torch.long, device=quality.device)
        if n > 0:
            q = quality[start:start + n]
            start += n
            for g in gt.unique():
                members = torch.nonzero(gt == g, as_tuple=True)[0]
                if members.numel() > 1:
                    members = members[q[members].sort(descending=True, stable=True).indices]
                    r[members] = torch.arange(members.numel(), device=quality.device)
        ranks.append(r)
    return torch.cat(ranks, 0)


def ia_bce_loss(logits, pos_idx, src_boxes, target_boxes, indices, avg_factor, alpha=0.25, gamma=2.0, rank_mode=None):
    """IoU-aware BCE ("ice") with rank-decayed soft targets.

    Args:
        logits: (B, Q, C) class logits.
        pos_idx: (batch_idx, query_idx, class_idx) of the positives.
        src_boxes, target_boxes: (P, 4) cxcywh predicted / gt boxes of the positives.
        indices: the matching (used for the rank of each positive within its gt).
        avg_factor: normaliser.
        rank_mode: ``None`` (weight 1), ``"one2one"`` or ``"one2many"`` (weight exp(-rank/1.5)).

    With p = sigmoid(logits) and t = max(p_pos^alpha IoU^(1-alpha), 0.01) * rank_weight (no grad),
    loss = sum(-w_pos log p - w_neg log(1-p)) / avg_factor, where w_pos = t at the positive
    (query, class) and 0 elsewhere, w_neg = 1-t at positives and p^gamma elsewhere.
    Returns ``(loss, rank_weight)``; rank_weight is reused by the box losses.
    """
    prob = logits.sigmoid()
    iou = box_ops.elementwise_box_iou(
        box_ops.box_cxcywh_to_xyxy(src_boxes), box_ops.box_cxcywh_to_xyxy(target_boxes)
    )[0]
    t = (prob[pos_idx] ** alpha * iou ** (1 - alpha)).clamp(min=0.01).detach()
    if rank_mode is None:
        rank_weight = 1
    else:
        rank_fn = local_rank_one2one if rank_mode == "one2one" else local_rank_one2many
        rank = rank_fn(t, indices)
        rank_weight = torch.exp(-rank / RANK_TAU).to(t.dtype)
    t = t * rank_weight

    pos_w = torch.zeros_like(logits)
    neg_w = prob ** gamma  # not detached: the negatives' weight carries gradient too
    pos_w[pos_idx] = t
    neg_w = neg_w.index_put(pos_idx, 1 - t)
    # log p and log(1-p) via logsigmoid: same values, finite for large |logits|
    loss = -pos_w * F.logsigmoid(logits) - neg_w * F.logsigmoid(-logits)
    return loss.sum() / avg_factor, rank_weight


def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2.0):
    """RetinaNet focal loss on (B, Q, C) logits; mean over queries, summed, / num_boxes."""
    prob = inputs.sigmoid()
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


# ----------------------------------------------------------------------------- criterion
class SetCriterion(nn.Module):
    """DAC-DETR loss.

    Args:
        num_classes: logits per query (91 for COCO); also the "no object" id used to build one-hots.
        matcher: one-to-one matcher (:class:`HungarianMatcher`).
        weight_dict: loss name -> weight (see :func:`build_weight_dict`).
        losses: subset of ``["labels", "boxes", "cardinality"]``.
        focal_alpha: alpha of the encoder focal loss.
        one2many_samples, one2many_k: :class:`Stage2Assigner` parameters (official: 300, 6).
    """

    def __init__(self, num_classes, matcher, weight_dict, losses, focal_alpha=0.25, one2many_samples=300, one2many_k=6):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.losses = list(losses)
        for name in self.losses:
            if name not in ("labels", "boxes", "cardinality"):
                raise ValueError(f"SetCriterion: unsupported loss {name!r}")
        self.focal_alpha = focal_alpha
        self.one2many = Stage2Assigner(one2many_samples, max_k=one2many_k)
        self.loc_weight = None  # rank weight of the last classification call, reused by loss_boxes

    # -- individual terms -------------------------------------------------------------
    def loss_labels(self, outputs, targets, indices, num_boxes, cdn=False, log=True, one2one=False, enc=False):
        suffix = "" if one2one else "_cdecoder"
        logits = outputs["pred_logits" + suffix]
        if one2one:
            log = False
        idx = _src_permutation_idx(indices)
        tgt_cls = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)

        if not enc:
            boxes = outputs["pred_boxes" + suffix]
            tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(boxes)
            if cdn:
                mode = None
            else:
                mode = "one2one" if one2one else "one2many"
            loss, self.loc_weight = ia_bce_loss(
                logits, idx + (tgt_cls,), boxes[idx], tgt_boxes, indices, num_boxes, alpha=0.25, gamma=2.0, rank_mode=mode
            )
            losses = {"loss_ce": loss}
        else:
            target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
            target_classes[idx] = tgt_cls
            onehot = torch.zeros(logits.shape[:2] + (logits.shape[2] + 1,), dtype=logits.dtype, device=logits.device)
            onehot.scatter_(2, target_classes.unsqueeze(-1), 1)
            onehot = onehot[:, :, :-1]
            loss = sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2.0) * logits.shape[1]
            losses = {"loss_ce": loss}

        if log:
            losses["class_error"] = 100 - _top1_accuracy(logits[idx], tgt_cls)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes, **kwargs):
        """|#queries whose argmax is not the last class - #gt|, averaged over images (logging only)."""
        logits = outputs["pred_logits_cdecoder"]
        tgt_len = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float)
        card = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).float()
        return {"cardinality_error": F.l1_loss(card, tgt_len)}

    def loss_boxes(self, outputs, targets, indices, num_boxes, cdn=False, enc=False, one2one=False, **kwargs):
        key = "pred_boxes" if one2one else "pred_boxes_cdecoder"
        idx = _src_permutation_idx(indices)
        src = outputs[key][idx]
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0).to(src)
        weight = 1 if enc else self.loc_weight
        l1 = F.l1_loss(src, tgt, reduction="none").sum(dim=-1)
        giou = box_ops.elementwise_generalized_box_iou(box_ops.box_cxcywh_to_xyxy(src), box_ops.box_cxcywh_to_xyxy(tgt))
        return {
            "loss_bbox": (weight * l1).sum() / num_boxes,
            "loss_giou": (weight * (1 - giou)).sum() / num_boxes,
        }

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
        if loss == "labels":
            return self.loss_labels(outputs, targets, indices, num_boxes, **kwargs)
        if loss == "boxes":
            kwargs.pop("log", None)
            return self.loss_boxes(outputs, targets, indices, num_boxes, **kwargs)
        if loss == "cardinality":
            return self.loss_cardinality(outputs, targets, indices, num_boxes)
        raise KeyError(f"unknown loss {loss!r}")

    # -- branches ------------------------------------------------------------------------
    def _branch(self, outputs, targets, indices, num_boxes, log=True, cdn=False, enc=False):
        """Every configured term on the C-decoder side (or the encoder side with enc=True)."""
        out = {}
        for loss in self.losses:
            kw = {"cdn": cdn, "enc": enc}
            if loss == "labels":
                kw["log"] = log
            out.update(self.get_loss(loss, outputs, targets, indices, num_boxes, **kw))
        return out

    def _one2one(self, outputs, targets, indices, num_boxes, cdn=False):
        out = self.loss_labels(outputs, targets, indices, num_boxes, cdn=cdn, one2one=True)
        out.update(self.loss_boxes(outputs, targets, indices, num_boxes, cdn=cdn, one2one=True))
        return out

    @staticmethod
    def _add_one2one(losses, part, suffix):
        for k, v in part.items():
            key = k + suffix + "_one2one"
            losses[key] = losses[key] + v if key in losses else v

    @staticmethod
    def dn_positive_indices(targets, num_groups, single_pad, device):
        """(query_idx, gt_idx) of the positive dn queries: group g, gt j -> query g*single_pad + j."""
        pos = []
        for t in targets:
            n = len(t["labels"])
            gt = torch.arange(n, dtype=torch.long, device=device).repeat(num_groups)
            offs = (torch.arange(num_groups, dtype=torch.long, device=device) * single_pad).repeat_interleave(n)
            pos.append((offs + gt, gt))
        return pos

    def _dn_placeholders(self, suffix, device):
        zero = lambda: torch.zeros([], device=device)  # noqa: E731
        out = {}
        for name in ("loss_bbox", "loss_giou", "loss_ce", "cardinality_error"):
            out[f"{name}_dn{suffix}"] = zero()
        for name in ("loss_bbox", "loss_giou", "loss_ce"):
            out[f"{name}_dn{suffix}_one2one"] = zero()
        return out

    def forward(self, outputs, targets, balance_targets, g2=False):
        """Compute the loss dict.

        Args:
            outputs: model output dict (``pred_logits``, ``pred_boxes``, ``pred_logits_cdecoder``,
                ``pred_boxes_cdecoder``, ``aux_outputs``, ``enc_outputs`` and, in training,
                ``dn_meta`` / ``dn_meta_cdecoder`` with ``pad_size``, ``num_dn_group`` and
                ``output_known_lbs_bboxes``).
            targets: list of dicts with ``labels`` and ``boxes`` (cxcywh, normalised).
            balance_targets: the targets repeated 3x; only their box count is used (normaliser of
                the one-to-many branch).
            g2: skip the one-to-many branch (unused option of the official code).
        """
        device = outputs["pred_logits"].device
        main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        aux_list = outputs.get("aux_outputs", [])

        idx_o2o = self.matcher(main, targets)
        if not g2:
            idx_o2m, _ = self.one2many(main, targets)

        num_boxes = _dist_mean_count(sum(len(t["labels"]) for t in targets), device)
        num_boxes_balance = _dist_mean_count(sum(len(t["labels"]) for t in balance_targets), device)

        losses = {}
        dn_out = dn_out_c = None
        if self.training:
            dn_meta = outputs.get("dn_meta")
            dn_meta_c = outputs.get("dn_meta_cdecoder")
            if dn_meta_c and "output_known_lbs_bboxes" in dn_meta_c and dn_meta and "output_known_lbs_bboxes" in dn_meta:
                groups, pad_size = dn_meta_c["num_dn_group"], dn_meta_c["pad_size"]
                if pad_size % groups != 0:
                    raise ValueError("dn_meta: pad_size must be a multiple of num_dn_group")
                single_pad = pad_size // groups
                dn_pos = self.dn_positive_indices(targets, groups, single_pad, device)
                dn_norm = num_boxes * groups
                dn_out_c = dn_meta_c["output_known_lbs_bboxes"]
                dn_out = dn_meta["output_known_lbs_bboxes"]

        if dn_out is not None:
            part = self._branch(dn_out_c, targets, dn_pos, dn_norm, log=False, cdn=True)
            losses.update({k + "_dn": v for k, v in part.items()})
            self._add_one2one(losses, self._one2one(dn_out, targets, dn_pos, dn_norm, cdn=True), "_dn")
        else:
            losses.update(self._dn_placeholders("", device))

        if not g2:
            losses.update(self._branch(outputs, targets, idx_o2m, num_boxes_balance, log=True))
        self._add_one2one(losses, self._one2one(outputs, targets, idx_o2o, num_boxes), "")

        for i, aux in enumerate(aux_list):
            idx_o2o = self.matcher(aux, targets)
            if not g2:
                idx_o2m, _ = self.one2many(aux, targets)
                part = self._branch(aux, targets, idx_o2m, num_boxes_balance, log=False)
                losses.update({k + f"_{i}": v for k, v in part.items()})
            self._add_one2one(losses, self._one2one(aux, targets, idx_o2o, num_boxes), f"_{i}")
            if dn_out is not None:
                part = self._branch(dn_out_c["aux_outputs"][i], targets, dn_pos, dn_norm, log=False, cdn=True)
                losses.update({k + f"_dn_{i}": v for k, v in part.items()})
                self._add_one2one(
                    losses, self._one2one(dn_out["aux_outputs"][i], targets, dn_pos, dn_norm, cdn=True), f"_dn_{i}"
                )
            else:
                losses.update(self._dn_placeholders(f"_{i}", device))

        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            bin_targets = [dict(t, labels=torch.zeros_like(t["labels"])) for t in targets]
            idx_enc = self.matcher(enc, bin_targets, onetone=False)
            part = self._branch(enc, bin_targets, idx_enc, num_boxes, log=False, enc=True)
            losses.update({k + "_enc": v for k, v in part.items()})
        return losses


# ----------------------------------------------------------------------------- builders
def build_weight_dict(cls_coef=1.0, bbox_coef=5.0, giou_coef=2.0, aux_loss=True, dec_layers=6, enc_cls_coef=2):
    """Weight of every loss key, in the official order (168 entries for 6 decoder layers)."""
    base = {
        "loss_ce": cls_coef,
        "loss_bbox": bbox_coef,
        "loss_giou": giou_coef,
        "loss_ce_dn": cls_coef,
        "loss_bbox_dn": bbox_coef,
        "loss_giou_dn": giou_coef,
    }
    weights = dict(base)
    if aux_loss:
        extra = {}
        for i in range(dec_layers - 1):
            extra.update({f"{k}_{i}": v for k, v in base.items()})
        for k, v in base.items():
            extra[k + "_enc"] = enc_cls_coef if k == "loss_ce" else v
        weights.update(extra)
    with_o2o = {}
    for k, v in weights.items():
        with_o2o[k] = v
        with_o2o[k + "_one2one"] = v
    with_g2 = {}
    for k, v in with_o2o.items():
        with_g2[k] = v
        with_g2[k + "_g2"] = v
    return with_g2


def build_criterion(args):
    """``(SetCriterion, {"bbox": NMSPostProcess()})`` from the training flags."""
    dataset = getattr(args, "dataset_file", "coco")
    num_classes = 91 if dataset == "coco" else (250 if dataset == "coco_panoptic" else 20)
    if getattr(args, "masks", False):
        raise NotImplementedError("DAC-DETR: segmentation (--masks) is not supported")
    weight_dict = build_weight_dict(
        cls_coef=getattr(args, "cls_loss_coef", 1),
        bbox_coef=getattr(args, "bbox_loss_coef", 5),
        giou_coef=getattr(args, "giou_loss_coef", 2),
        aux_loss=getattr(args, "aux_loss", True),
        dec_layers=getattr(args, "dec_layers", 6),
    )
    criterion = SetCriterion(
        num_classes,
        build_matcher(args),
        weight_dict,
        ["labels", "boxes", "cardinality"],
        focal_alpha=getattr(args, "focal_alpha", 0.25),
    )
    return criterion, {"bbox": NMSPostProcess()}


def weighted_total(loss_dict, weight_dict):
    """Sum of ``loss * weight`` over the keys present in both dicts."""
    return sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)

