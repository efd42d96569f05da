"""DAC-DETR losses in Paddle: Hungarian matcher (scipy), the one-to-many assigner of the C-decoder,
IA-BCE ("ice") with rank-decayed targets, sigmoid focal loss, L1 + GIoU, and every auxiliary term.

Same keys, weights and normalisers as :mod:`dacdetr.models.criterion`:

* C-decoder one-to-many: ``loss_ce`` / ``loss_bbox`` / ``loss_giou`` (+ ``_{i}``), / (3 x num_gt);
* O-decoder one-to-one (Hungarian): ``*_one2one``, / num_gt;
* denoising: ``*_dn`` (C-decoder) and ``*_dn_one2one`` (O-decoder), positives only, / (num_gt x groups);
* encoder proposals: class-agnostic Hungarian, focal loss + L1 + GIoU (``*_enc``).

Matching and assignment run on detached values (NumPy / SciPy); the losses are Paddle ops.
"""
from __future__ import annotations

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .detr import NMSPostProcess
from .ops import box_cxcywh_to_xyxy, box_iou, elementwise_box_iou, elementwise_generalized_box_iou, \
    generalized_box_iou

__all__ = ["HungarianMatcher", "Stage2Assigner", "SetCriterion", "build_criterion", "build_weight_dict",
           "ia_bce_loss", "sigmoid_focal_loss", "weighted_total"]

RANK_TAU = 1.5


def _np(x):
    return x.numpy() if isinstance(x, paddle.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------- matching
class HungarianMatcher(nn.Layer):
    """One-to-one assignment minimising 2 x focal class cost + 5 x L1 + 2 x (-GIoU) (default weights)."""

    def __init__(self, cost_class=1.0, cost_bbox=1.0, cost_giou=1.0, focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.alpha, self.gamma = focal_alpha, focal_gamma

    @paddle.no_grad()
    def forward(self, outputs, targets, onetone=True):
        """Returns a list of (query_idx, gt_idx) int64 NumPy pairs, query_idx ascending."""
        suffix = "" if onetone else "_cdecoder"
        logits, boxes = outputs["pred_logits" + suffix], outputs["pred_boxes" + suffix]
        bs, nq = logits.shape[:2]
        sizes = [int(t["labels"].shape[0]) for t in targets]
        if sum(sizes) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int64)) for _ in targets]
        tgt_ids = paddle.concat([t["labels"] for t in targets])
        tgt_boxes = paddle.concat([t["boxes"] for t in targets]).astype(boxes.dtype)
        prob = F.sigmoid(logits.flatten(0, 1))
        out_boxes = boxes.flatten(0, 1)
        p = paddle.gather(prob, tgt_ids, axis=1)
        eps = 1e-8
        c_cls = (self.alpha * (1 - p) ** self.gamma * (-paddle.log(p + eps))
                 - (1 - self.alpha) * p ** self.gamma * (-paddle.log(1 - p + eps)))
        c_l1 = (out_boxes[:, None, :] - tgt_boxes[None, :, :]).abs().sum(-1)
        c_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_boxes), box_cxcywh_to_xyxy(tgt_boxes))
        cost = (self.cost_bbox * c_l1 + self.cost_class * c_cls + self.cost_giou * c_giou).reshape([bs, nq, -1])
        cost = cost.numpy()
        result, start = [], 0
        for b, n in enumerate(sizes):
            rows, cols = linear_sum_assignment(cost[b, :, start:start + n])
            result.append((rows.astype(np.int64), cols.astype(np.int64)))
            start += n
        return result


class Stage2Assigner(nn.Layer):
    """One-to-many assignment (per image): quality = 0.7 IoU(O-decoder box, gt) + 0.3 sigmoid(C-decoder
    logit of the gt class); positives = queries whose best quality >= 0.4 plus each gt's best query; at
    most 25 % of ``num_queries`` positives are kept at random (Paddle generator); every gt with ``c`` kept
    positives is then given its top-``min(c, max_k)`` queries by quality."""

    def __init__(self, num_queries=300, max_k=6, threshold=0.4):
        super().__init__()
        self.batch_size_per_image, self.positive_fraction, self.k, self.threshold = num_queries, 0.25, max_k, threshold

    @paddle.no_grad()
    def forward(self, outputs, targets):
        indices = []
        for b, tgt in enumerate(targets):
            gt_cls = _np(tgt["labels"]).astype(np.int64)
            logits = outputs["pred_logits_cdecoder"][b].detach()
            boxes = outputs["pred_boxes"][b].detach()
            nq = logits.shape[0]
            if gt_cls.size == 0:
                indices.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
                continue
            iou = box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt["boxes"].astype(boxes.dtype)))[0]
            score = paddle.gather(F.sigmoid(logits), paddle.to_tensor(gt_cls), axis=1)
            quality = (0.7 * iou + 0.3 * score).numpy().T  # (M gt, N queries)
            matches = quality.argmax(0)
            labels = (quality.max(0) >= self.threshold).astype(np.int64)
            labels[quality.argmax(1)] = 1  # each gt's best query (low-quality matches allowed)
            positive = np.nonzero(labels == 1)[0]
            num_pos = min(positive.size, int(self.batch_size_per_image * self.positive_fraction))
            if positive.size > num_pos:  # random subset (only which gts keep how many positives matters)
                positive = positive[paddle.randperm(positive.size).numpy()[:num_pos]]
            pos_gt = matches[positive]
            if pos_gt.size == 0:
                indices.append((positive.astype(np.int64), pos_gt.astype(np.int64)))
                continue
            gts, counts = np.unique(pos_gt, return_counts=True)
            kk = min(self.k, nq)
            top = np.argsort(-quality[gts], axis=1, kind="stable")[:, :kk]
            keep = [min(int(c), kk) for c in counts]
            out_pr = np.concatenate([row[:n] for row, n in zip(top, keep)])
            out_gt = np.concatenate([np.full(n, g) for g, n in zip(gts, keep)])
            indices.append((out_pr.astype(np.int64), out_gt.astype(np.int64)))
        return indices


# ----------------------------------------------------------------------------- losses
def _rank_one2many(quality, indices):
    ranks, start = [], 0
    for _, gt in indices:
        n = len(gt)
        r = np.zeros(n, np.int64)
        q = quality[start:start + n]
        start += n
        for g in np.unique(gt):
            members = np.nonzero(gt == g)[0]
            if members.size > 1:
                members = members[np.argsort(-q[members], kind="stable")]
                r[members] = np.arange(members.size)
        ranks.append(r)
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def _rank_one2one(quality, indices):
    ranks, start = [], 0
    for _, gt in indices:
        n = len(gt)
        if n == 0:
            continue
        q = quality[start:start + n]
        start += n
        num_tgt = int(gt.max()) + 1
        bag = n // num_tgt
        order = np.argsort(-q.reshape(num_tgt, bag), axis=-1, kind="stable")
        r = np.zeros_like(order)
        np.put_along_axis(r, order, np.tile(np.arange(bag), (num_tgt, 1)), axis=-1)
        ranks.append(r.reshape(-1))
    return np.concatenate(ranks) if ranks else np.zeros(0, np.int64)


def ia_bce_loss(logits, pos_idx, src_boxes, target_boxes, indices, avg_factor, alpha=0.25, gamma=2.0,
                rank_mode=None):
    """IoU-aware BCE: with p = sigmoid(logits), t = max(p_pos^alpha IoU^(1-alpha), 0.01) x rank weight
    (no gradient), loss = sum(-w_pos log p - w_neg log(1 - p)) / avg_factor, w_pos = t at the positive
    (query, class), w_neg = 1 - t there and p^gamma elsewhere. Returns (loss, rank weight (P,) or 1)."""
    prob = F.sigmoid(logits)
    b, q, c = pos_idx
    idx = paddle.to_tensor(np.stack([b, q, c], 1).astype(np.int64))
    iou = elementwise_box_iou(box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(target_boxes))[0]
    t = paddle.clip(paddle.gather_nd(prob, idx) ** alpha * iou ** (1 - alpha), min=0.01).detach()
    t_np = t.numpy()
    if rank_mode is None:
        rank_weight = None
    else:
        rank = (_rank_one2one if rank_mode == "one2one" else _rank_one2many)(t_np, indices)
        rank_weight = np.exp(-rank / RANK_TAU).astype(t_np.dtype)
        t_np = t_np * rank_weight
    pos_w = np.zeros(logits.shape, dtype=t_np.dtype)
    is_pos = np.zeros(logits.shape, dtype=bool)
    pos_w[b, q, c] = t_np
    is_pos[b, q, c] = True
    neg_at_pos = np.where(is_pos, 1.0 - pos_w, 0.0).astype(t_np.dtype)
    pos_w_t = paddle.to_tensor(pos_w)
    neg_w = paddle.where(paddle.to_tensor(is_pos), paddle.to_tensor(neg_at_pos), prob ** gamma)
    loss = -pos_w_t * F.log_sigmoid(logits) - neg_w * F.log_sigmoid(-logits)
    weight = 1 if rank_weight is None else paddle.to_tensor(rank_weight)
    return loss.sum() / avg_factor, weight


def sigmoid_focal_loss(inputs, targets, num_boxes, alpha=0.25, gamma=2.0):
    """RetinaNet focal loss on (B, Q, C) logits: mean over queries, summed, / num_boxes."""
    prob = F.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_boxes


def _mean_count(count):
    """Box count summed over ranks / world size, at least 1."""
    t = paddle.to_tensor([float(count)], dtype="float32")
    world = paddle.distributed.get_world_size()
    if world > 1:
        paddle.distributed.all_reduce(t)
    return max(float(t.numpy()[0]) / world, 1.0)


def _gather_pairs(x, indices):
    """x (B, Q, ...) at the (batch, query) pairs of ``indices``."""
    b = np.concatenate([np.full(len(src), i, np.int64) for i, (src, _) in enumerate(indices)])
    q = np.concatenate([np.asarray(src, np.int64) for src, _ in indices])
    return paddle.gather_nd(x, paddle.to_tensor(np.stack([b, q], 1))), b, q


def _targets_at(targets, indices, key):
    parts = [paddle.gather(t[key], paddle.to_tensor(np.asarray(j, np.int64))) for t, (_, j) in zip(targets, indices)]
    return paddle.concat(parts)


class SetCriterion(nn.Layer):
    def __init__(self, num_classes, matcher, weight_dict, losses, focal_alpha=0.25, one2many_samples=300,
                 one2many_k=6):
        super().__init__()
        self.num_classes, self.matcher, self.weight_dict = num_classes, matcher, weight_dict
        self.losses = list(losses)
        for name in self.losses:
            if name not in ("labels", "boxes", "cardinality"):
                raise ValueError(f"SetCriterion: unsupported loss {name!r}")
        self.focal_alpha = focal_alpha
        self.one2many = Stage2Assigner(one2many_samples, max_k=one2many_k)
        self._rank = {"weight": None}  # rank weight of the last classification call, reused by loss_boxes

    def loss_labels(self, outputs, targets, indices, num_boxes, cdn=False, log=True, one2one=False, enc=False):
        suffix = "" if one2one else "_cdecoder"
        logits = outputs["pred_logits" + suffix]
        if one2one:
            log = False
        src_logits, b, q = _gather_pairs(logits, indices)
        tgt_cls = _targets_at(targets, indices, "labels")
        if not enc:
            boxes = outputs["pred_boxes" + suffix]
            src_boxes, _, _ = _gather_pairs(boxes, indices)
            tgt_boxes = _targets_at(targets, indices, "boxes").astype(boxes.dtype)
            mode = None if cdn else ("one2one" if one2one else "one2many")
            loss, self._rank["weight"] = ia_bce_loss(logits, (b, q, tgt_cls.numpy()), src_boxes, tgt_boxes, indices,
                                                num_boxes, rank_mode=mode)
        else:
            onehot = np.zeros(logits.shape, dtype=np.float32)
            onehot[b, q, tgt_cls.numpy()] = 1.0
            onehot = paddle.to_tensor(onehot).astype(logits.dtype)
            loss = sigmoid_focal_loss(logits, onehot, num_boxes, alpha=self.focal_alpha, gamma=2.0) * logits.shape[1]
        losses = {"loss_ce": loss}
        if log:
            pred = src_logits.numpy().argmax(-1)
            acc = 100.0 * float((pred == tgt_cls.numpy()).mean()) if pred.size else 0.0
            losses["class_error"] = paddle.to_tensor(100.0 - acc)
        return losses

    @paddle.no_grad()
    def loss_cardinality(self, outputs, targets, indices, num_boxes, **kwargs):
        logits = outputs["pred_logits_cdecoder"].numpy()
        card = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).astype(np.float32)
        tgt_len = np.asarray([int(t["labels"].shape[0]) for t in targets], np.float32)
        return {"cardinality_error": paddle.to_tensor(np.abs(card - tgt_len).mean())}

    def loss_boxes(self, outputs, targets, indices, num_boxes, cdn=False, enc=False, one2one=False, **kwargs):
        key = "pred_boxes" if one2one else "pred_boxes_cdecoder"
        src, _, _ = _gather_pairs(outputs[key], indices)
        tgt = _targets_at(targets, indices, "boxes").astype(src.dtype)
        weight = 1 if enc else self._rank["weight"]
        l1 = (src - tgt).abs().sum(-1)
        giou = elementwise_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))
        if isinstance(weight, paddle.Tensor):
            weight = weight.astype(src.dtype)
        return {"loss_bbox": (weight * l1).sum() / num_boxes, "loss_giou": (weight * (1 - giou)).sum() / num_boxes}

    def get_loss(self, loss, outputs, targets, indices, num_boxes, **kwargs):
        if loss == "labels":
            return self.loss_labels(outputs, targets, indices, num_boxes, **kwargs)
        if loss == "boxes":
            kwargs.pop("log", None)
            return self.loss_boxes(outputs, targets, indices, num_boxes, **kwargs)
        if loss == "cardinality":
            return self.loss_cardinality(outputs, targets, indices, num_boxes)
        raise KeyError(f"unknown loss {loss!r}")

    def _branch(self, outputs, targets, indices, num_boxes, log=True, cdn=False, enc=False):
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
    def dn_positive_indices(targets, num_groups, single_pad):
        pos = []
        for t in targets:
            n = int(t["labels"].shape[0])
            gt = np.tile(np.arange(n, dtype=np.int64), num_groups)
            offs = np.repeat(np.arange(num_groups, dtype=np.int64) * single_pad, n)
            pos.append((offs + gt, gt))
        return pos

    @staticmethod
    def _dn_placeholders(suffix):
        out = {f"{name}_dn{suffix}": paddle.zeros([]) for name in ("loss_bbox", "loss_giou", "loss_ce",
                                                                    "cardinality_error")}
        out.update({f"{name}_dn{suffix}_one2one": paddle.zeros([]) for name in ("loss_bbox", "loss_giou", "loss_ce")})
        return out

    def forward(self, outputs, targets, balance_targets, g2=False):
        """``targets``: dicts with ``labels`` (int64) and ``boxes`` (cxcywh) Paddle tensors;
        ``balance_targets``: the targets repeated 3x (only their box count is used)."""
        main = {k: v for k, v in outputs.items() if k not in ("aux_outputs", "enc_outputs")}
        aux_list = outputs.get("aux_outputs", [])
        idx_o2o = self.matcher(main, targets)
        if not g2:
            idx_o2m = self.one2many(main, targets)
        num_boxes = _mean_count(sum(int(t["labels"].shape[0]) for t in targets))
        num_boxes_balance = _mean_count(sum(int(t["labels"].shape[0]) for t in balance_targets))

        losses = {}
        dn_out = dn_out_c = None
        if self.training:
            dn_meta, dn_meta_c = outputs.get("dn_meta"), outputs.get("dn_meta_cdecoder")
            if dn_meta_c and "output_known_lbs_bboxes" in dn_meta_c and dn_meta and "output_known_lbs_bboxes" in dn_meta:
                groups, pad_size = dn_meta_c["num_dn_group"], dn_meta_c["pad_size"]
                if pad_size % groups != 0:
                    raise ValueError("dn_meta: pad_size must be a multiple of num_dn_group")
                dn_pos = self.dn_positive_indices(targets, groups, pad_size // groups)
                dn_norm = num_boxes * groups
                dn_out_c, dn_out = dn_meta_c["output_known_lbs_bboxes"], dn_meta["output_known_lbs_bboxes"]

        if dn_out is not None:
            part = self._branch(dn_out_c, targets, dn_pos, dn_norm, log=False, cdn=True)
            losses.update({k + "_dn": v for k, v in part.items()})
            self._add_one2one(losses, self._one2one(dn_out, targets, dn_pos, dn_norm, cdn=True), "_dn")
        else:
            losses.update(self._dn_placeholders(""))

        if not g2:
            losses.update(self._branch(outputs, targets, idx_o2m, num_boxes_balance, log=True))
        self._add_one2one(losses, self._one2one(outputs, targets, idx_o2o, num_boxes), "")

        for i, aux in enumerate(aux_list):
            idx_o2o = self.matcher(aux, targets)
            if not g2:
                idx_o2m = self.one2many(aux, targets)
                part = self._branch(aux, targets, idx_o2m, num_boxes_balance, log=False)
                losses.update({k + f"_{i}": v for k, v in part.items()})
            self._add_one2one(losses, self._one2one(aux, targets, idx_o2o, num_boxes), f"_{i}")
            if dn_out is not None:
                part = self._branch(dn_out_c["aux_outputs"][i], targets, dn_pos, dn_norm, log=False, cdn=True)
                losses.update({k + f"_dn_{i}": v for k, v in part.items()})
                self._add_one2one(losses, self._one2one(dn_out["aux_outputs"][i], targets, dn_pos, dn_norm,
                                                        cdn=True), f"_dn_{i}")
            else:
                losses.update(self._dn_placeholders(f"_{i}"))

        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            bin_targets = [dict(t, labels=paddle.zeros_like(t["labels"])) for t in targets]
            idx_enc = self.matcher(enc, bin_targets, onetone=False)
            part = self._branch(enc, bin_targets, idx_enc, num_boxes, log=False, enc=True)
            losses.update({k + "_enc": v for k, v in part.items()})
        return losses


def build_weight_dict(cls_coef=1.0, bbox_coef=5.0, giou_coef=2.0, aux_loss=True, dec_layers=6, enc_cls_coef=2):
    """Weight of every loss key (168 entries for 6 decoder layers), in the official order."""
    base = {"loss_ce": cls_coef, "loss_bbox": bbox_coef, "loss_giou": giou_coef,
            "loss_ce_dn": cls_coef, "loss_bbox_dn": bbox_coef, "loss_giou_dn": giou_coef}
    weights = dict(base)
    if aux_loss:
        for i in range(dec_layers - 1):
            weights.update({f"{k}_{i}": v for k, v in base.items()})
        for k, v in base.items():
            weights[k + "_enc"] = enc_cls_coef if k == "loss_ce" else v
    with_o2o = {}
    for k, v in weights.items():
        with_o2o[k] = v
        with_o2o[k + "_one2one"] = v
    out = {}
    for k, v in with_o2o.items():
        out[k] = v
        out[k + "_g2"] = v
    return out


def build_criterion(args):
    dataset = getattr(args, "dataset_file", "coco")
    num_classes = 91 if dataset == "coco" else (250 if dataset == "coco_panoptic" else 20)
    weight_dict = build_weight_dict(getattr(args, "cls_loss_coef", 1), getattr(args, "bbox_loss_coef", 5),
                                    getattr(args, "giou_loss_coef", 2), getattr(args, "aux_loss", True),
                                    getattr(args, "dec_layers", 6))
    matcher = HungarianMatcher(args.set_cost_class, args.set_cost_bbox, args.set_cost_giou)
    criterion = SetCriterion(num_classes, matcher, weight_dict, ["labels", "boxes", "cardinality"],
                             focal_alpha=getattr(args, "focal_alpha", 0.25))
    return criterion, {"bbox": NMSPostProcess()}


def weighted_total(loss_dict, weight_dict):
    """Sum of loss x weight over the keys in both dicts."""
    total = None
    for k, v in loss_dict.items():
        if k in weight_dict:
            total = v * weight_dict[k] if total is None else total + v * weight_dict[k]
    return total
