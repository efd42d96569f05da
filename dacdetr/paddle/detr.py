"""The DAC-DETR detector in Paddle: backbone + deformable transformer + per-layer heads, contrastive
denoising queries and the NMS post-processor.

``forward(samples, targets=None, dn=None)`` returns the same dict as the PyTorch model:
``pred_logits`` / ``pred_boxes`` (O-decoder, last layer), ``pred_logits_cdecoder`` /
``pred_boxes_cdecoder`` (C-decoder), ``aux_outputs`` (other layers), ``enc_outputs`` (encoder
proposals + ``anchors``) and, in training, ``dn_meta`` / ``dn_meta_cdecoder``. ``dn`` lets a caller
supply the denoising queries (see :func:`prepare_for_cdn`) instead of drawing new ones.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .backbone import build_backbone
from .ops import NestedTensor, box_cxcywh_to_xyxy, inverse_sigmoid, nested_tensor_from_tensor_list
from .transformer import build_deformable_transformer, constant_, xavier_uniform_

__all__ = ["MLP", "DeformableDETR", "prepare_for_cdn", "NMSPostProcess", "build", "nms_numpy"]


class MLP(nn.Layer):
    """``num_layers`` Linear layers with ReLU between them."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.LayerList([nn.Linear(i, o) for i, o in zip(dims_in, dims_out)])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def prepare_for_cdn(targets, dn_number=100, label_noise_ratio=0.5, box_noise_scale=0.4, num_classes=91,
                    num_queries=300):
    """Contrastive denoising queries (DINO), drawn with Paddle's generator.

    ``targets``: dicts with ``labels`` (N,) int64 and ``boxes`` (N, 4) normalised cxcywh (Paddle tensors or
    arrays). Returns a dict: ``labels`` (B, pad) int64 noisy labels (-1 in empty slots), ``boxes_unact``
    (B, pad, 4) inverse-sigmoid noisy boxes (0 in empty slots), ``attn_mask`` (pad + num_queries)^2 bool
    (True = blocked) and ``meta`` = {pad_size, num_dn_group}. Layout: ``2 * groups`` copies of ``max_gt``
    slots, positives then negatives per group.
    """
    labels_l = [np.asarray(t["labels"].numpy() if isinstance(t["labels"], paddle.Tensor) else t["labels"],
                           dtype=np.int64).reshape(-1) for t in targets]
    boxes_l = [np.asarray(t["boxes"].numpy() if isinstance(t["boxes"], paddle.Tensor) else t["boxes"],
                          dtype=np.float32).reshape(-1, 4) for t in targets]
    counts = [len(lab) for lab in labels_l]
    bs = len(targets)
    max_gt = max(counts) if counts else 0
    groups = 1 if max_gt == 0 else max(1, (dn_number * 2) // (max_gt * 2))
    n = sum(counts)
    known_labels = np.tile(np.concatenate(labels_l) if n else np.zeros(0, np.int64), 2 * groups)
    known_boxes = paddle.to_tensor(np.tile(np.concatenate(boxes_l) if n else np.zeros((0, 4), np.float32),
                                           (2 * groups, 1)))
    noisy_labels = known_labels.copy()
    if label_noise_ratio > 0 and known_labels.size:
        p = paddle.rand([known_labels.size]).numpy()
        chosen = np.nonzero(p < label_noise_ratio * 0.5)[0]
        if chosen.size:
            noisy_labels[chosen] = paddle.randint(0, num_classes, [chosen.size]).numpy()
    noisy_boxes = known_boxes
    if box_noise_scale > 0 and n:
        xy, wh = known_boxes[:, :2], known_boxes[:, 2:]
        corners = paddle.concat([xy - wh / 2, xy + wh / 2], 1)
        half = paddle.concat([wh / 2, wh / 2], 1)
        sign = paddle.randint(0, 2, known_boxes.shape).astype("float32") * 2.0 - 1.0
        magnitude = paddle.rand(known_boxes.shape)
        negative = np.zeros((2 * groups * n, 1), np.float32)
        for g in range(groups):
            negative[(2 * g + 1) * n:(2 * g + 2) * n] = 1.0
        magnitude = (magnitude + paddle.to_tensor(negative)) * sign
        corners = paddle.clip(corners + magnitude * half * box_noise_scale, 0.0, 1.0)
        noisy_boxes = paddle.concat([(corners[:, :2] + corners[:, 2:]) / 2, corners[:, 2:] - corners[:, :2]], 1)
    boxes_unact = inverse_sigmoid(noisy_boxes).numpy() if n else np.zeros((0, 4), np.float32)

    pad_size = max_gt * 2 * groups
    lab = np.full((bs, pad_size), -1, np.int64)
    box = np.zeros((bs, pad_size, 4), np.float32)
    if n:
        bid = np.tile(np.concatenate([np.full(c, i) for i, c in enumerate(counts)]), 2 * groups)
        within = np.concatenate([np.arange(c) for c in counts])
        slots = np.concatenate([within + max_gt * i for i in range(2 * groups)])
        lab[bid, slots] = noisy_labels
        box[bid, slots] = boxes_unact
    size = pad_size + num_queries
    mask = np.zeros((size, size), bool)
    mask[pad_size:, :pad_size] = True
    block = max_gt * 2
    for i in range(groups):
        lo, hi = block * i, block * (i + 1)
        mask[lo:hi, hi:pad_size] = True
        mask[lo:hi, :lo] = True
    return {"labels": paddle.to_tensor(lab), "boxes_unact": paddle.to_tensor(box),
            "attn_mask": paddle.to_tensor(mask), "meta": {"pad_size": pad_size, "num_dn_group": groups}}


class DeformableDETR(nn.Layer):
    """DAC-DETR: two-stage Deformable DETR with box refinement, mixed selection, look-forward-twice,
    CDN and the parameter-free C-decoder."""

    def __init__(self, backbone, transformer, num_classes, num_feature_levels, aux_loss=True,
                 with_box_refine=True, two_stage=True, num_queries_one2one=300, mixed_selection=True,
                 dn_number=100, dn_box_noise_scale=0.4, dn_label_noise_ratio=0.5, dn_labelbook_size=91):
        super().__init__()
        if not (two_stage and with_box_refine and mixed_selection):
            raise NotImplementedError("DAC-DETR needs --two_stage --with_box_refine --mixed_selection")
        hidden = transformer.d_model
        self.num_queries = num_queries_one2one
        self.num_feature_levels = num_feature_levels
        self.aux_loss = aux_loss
        num_pred = transformer.decoder.num_layers + 1
        # registration order = state-dict order of the PyTorch model
        self.transformer = transformer
        self.class_embed = nn.LayerList([nn.Linear(hidden, num_classes) for _ in range(num_pred)])
        self.bbox_embed = nn.LayerList([MLP(hidden, hidden, 4, 3) for _ in range(num_pred)])
        self.query_embed = nn.Embedding(num_queries_one2one, hidden)
        projs = [nn.Sequential(nn.Conv2D(ch, hidden, 1), nn.GroupNorm(32, hidden)) for ch in backbone.num_channels]
        in_ch = backbone.num_channels[-1]
        for _ in range(num_feature_levels - len(backbone.num_channels)):
            projs.append(nn.Sequential(nn.Conv2D(in_ch, hidden, 3, stride=2, padding=1), nn.GroupNorm(32, hidden)))
            in_ch = hidden
        self.input_proj = nn.LayerList(projs)
        self.backbone = backbone
        self.dn_number, self.dn_box_noise_scale = dn_number, dn_box_noise_scale
        self.dn_label_noise_ratio, self.dn_labelbook_size = dn_label_noise_ratio, dn_labelbook_size
        self.label_enc = nn.Embedding(dn_labelbook_size + 1, hidden)

        bias = -math.log((1 - 0.01) / 0.01)
        w0 = self.class_embed[0].weight.numpy()
        for head in self.class_embed:  # identical initial heads, as the deep copies of the PyTorch model
            head.weight.set_value(paddle.to_tensor(w0))
            constant_(head.bias, bias)
        w = [layer.weight.numpy() for layer in self.bbox_embed[0].layers]
        b = [layer.bias.numpy() for layer in self.bbox_embed[0].layers]
        for head in self.bbox_embed:
            for layer, wi, bi in zip(head.layers, w, b):
                layer.weight.set_value(paddle.to_tensor(wi))
                layer.bias.set_value(paddle.to_tensor(bi))
            constant_(head.layers[-1].weight, 0.0)
            constant_(head.layers[-1].bias, 0.0)
        for proj in self.input_proj:
            xavier_uniform_(proj[0].weight)
            constant_(proj[0].bias, 0.0)
        nn.initializer.Normal(0.0, 1.0)(self.query_embed.weight)
        nn.initializer.Normal(0.0, 1.0)(self.label_enc.weight)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed

    def _features(self, samples):
        features, pos = self.backbone(samples)
        srcs, masks = [], []
        for lvl, feat in enumerate(features):
            src, mask = feat.decompose()
            srcs.append(self.input_proj[lvl](src))
            masks.append(mask)
        for lvl in range(len(srcs), self.num_feature_levels):
            src = self.input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
            mask = F.interpolate(samples.mask[None].astype("float32"), size=src.shape[-2:],
                                 mode="nearest").astype("bool")[0]
            srcs.append(src)
            masks.append(mask)
            pos.append(self.backbone[1](NestedTensor(src, mask)).astype(src.dtype))
        return srcs, masks, pos

    def forward(self, samples, targets=None, dn=None):
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_tensor_list(samples)
        srcs, masks, pos = self._features(samples)
        num_q = self.transformer.two_stage_num_proposals
        if self.training:
            if dn is None:
                if targets is None:
                    raise ValueError("training forward needs targets (list of dicts with labels/boxes)")
                dn = prepare_for_cdn(targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale,
                                     self.dn_labelbook_size, num_q)
            labels = dn["labels"]
            valid = (labels >= 0).astype(self.label_enc.weight.dtype)[..., None]
            dn_label = self.label_enc(paddle.clip(labels, min=0)) * valid
            dn_bbox, attn_mask, meta = dn["boxes_unact"], dn["attn_mask"], dn["meta"]
        else:
            if targets is not None:
                raise ValueError("targets must be None in eval mode")
            dn_label = dn_bbox = meta = None
            attn_mask = paddle.zeros([num_q, num_q], dtype="bool")

        hs, init_ref, inter_refs, enc_class, enc_coord_unact, hs_c, inter_refs_c, anchors = self.transformer(
            srcs, masks, pos, self.query_embed.weight[:self.num_queries], attn_mask, dn_label, dn_bbox)
        hs[0] = hs[0] + self.label_enc.weight[0, 0] * 0.0  # label_enc always in the graph

        pad = meta["pad_size"] if self.training else 0
        keep = self.num_queries + pad
        classes, coords, classes_c, coords_c = [], [], [], []
        for lvl in range(len(hs)):
            ref = init_ref if lvl == 0 else inter_refs[lvl - 1]
            ref_c = init_ref if lvl == 0 else inter_refs_c[lvl - 1]
            classes.append(self.class_embed[lvl](hs[lvl])[:, :keep])
            coords.append(F.sigmoid(self.bbox_embed[lvl](hs[lvl]) + inverse_sigmoid(ref))[:, :keep])
            classes_c.append(self.class_embed[lvl](hs_c[lvl])[:, :keep])
            coords_c.append(F.sigmoid(self.bbox_embed[lvl](hs_c[lvl]) + inverse_sigmoid(ref_c))[:, :keep])

        out = {}
        if self.training:
            meta_o, meta_c = dict(meta), dict(meta)
            if pad > 0:
                meta_o["output_known_lbs_bboxes"] = self._dn_split(classes, coords, pad, "")
                meta_c["output_known_lbs_bboxes"] = self._dn_split(classes_c, coords_c, pad, "_cdecoder")
                classes = [c[:, pad:] for c in classes]
                coords = [c[:, pad:] for c in coords]
                classes_c = [c[:, pad:] for c in classes_c]
                coords_c = [c[:, pad:] for c in coords_c]
        out.update({"pred_logits": classes[-1], "pred_boxes": coords[-1],
                    "pred_logits_cdecoder": classes_c[-1], "pred_boxes_cdecoder": coords_c[-1]})
        if self.training:
            out["dn_meta"], out["dn_meta_cdecoder"] = meta_o, meta_c
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b, "pred_logits_cdecoder": c,
                                   "pred_boxes_cdecoder": d}
                                  for a, b, c, d in zip(classes[:-1], coords[:-1], classes_c[:-1], coords_c[:-1])]
        enc_coord = F.sigmoid(enc_coord_unact)
        out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord, "pred_logits_cdecoder": enc_class,
                              "pred_boxes_cdecoder": enc_coord, "anchors": anchors}
        return out

    def _dn_split(self, classes, coords, pad, suffix):
        out = {"pred_logits" + suffix: classes[-1][:, :pad], "pred_boxes" + suffix: coords[-1][:, :pad]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits" + suffix: c[:, :pad], "pred_boxes" + suffix: b[:, :pad]}
                                  for c, b in zip(classes[:-1], coords[:-1])]
        return out


def nms_numpy(boxes, scores, iou_threshold):
    """Greedy NMS of xyxy ``boxes`` (N, 4) in descending ``scores`` order; returns kept indices (by score)."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(boxes), bool)
    keep = []
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        rest = rest[~suppressed[rest]]
        if rest.size == 0:
            continue
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        iou = inter / (area[i] + area[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return np.asarray(keep, dtype=np.int64)


class NMSPostProcess(nn.Layer):
    """Top-``pre_topk`` over all (query, class) sigmoid scores, class-wise NMS (IoU 0.8), first ``keep``.
    Boxes come back as absolute xyxy in the (h, w) of ``target_sizes``."""

    def __init__(self, pre_topk=10000, iou_threshold=0.8, keep=300):
        super().__init__()
        self.pre_topk, self.iou_threshold, self.keep = pre_topk, iou_threshold, keep

    @paddle.no_grad()
    def forward(self, outputs, target_sizes):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        target_sizes = paddle.to_tensor(target_sizes) if not isinstance(target_sizes, paddle.Tensor) else target_sizes
        if len(logits) != len(target_sizes) or target_sizes.ndim != 2 or target_sizes.shape[1] != 2:
            raise ValueError("target_sizes must be (batch, 2) with one (h, w) per image")
        bs, nq, nc = logits.shape
        scores = F.sigmoid(logits).reshape([bs, nq * nc])
        sizes = target_sizes.astype(boxes.dtype)
        scale = paddle.stack([sizes[:, 1], sizes[:, 0], sizes[:, 1], sizes[:, 0]], 1)
        boxes = box_cxcywh_to_xyxy(boxes) * scale[:, None, :]
        k = min(self.pre_topk, nq * nc)
        results = []
        for b in range(bs):
            s, top = paddle.topk(scores[b], k)
            s, top = s.numpy(), top.numpy()
            query, label = top // nc, top % nc
            box = boxes[b].numpy()[query]
            kept = []
            for c in np.unique(label):
                idx = np.nonzero(label == c)[0]
                kept.append(idx[nms_numpy(box[idx], s[idx], self.iou_threshold)])
            kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
            kept = kept[np.argsort(-s[kept], kind="stable")][: self.keep]
            results.append({"scores": paddle.to_tensor(s[kept]), "labels": paddle.to_tensor(label[kept]),
                            "boxes": paddle.to_tensor(box[kept])})
        return results


def num_classes_for(dataset_file):
    if dataset_file == "coco_panoptic":
        return 250
    return 91 if dataset_file == "coco" else 20


def build(args):
    if getattr(args, "masks", False):
        raise NotImplementedError("--masks (segmentation head) is not part of DAC-DETR")
    backbone = build_backbone(args)
    transformer = build_deformable_transformer(args)
    return DeformableDETR(backbone, transformer, num_classes=num_classes_for(getattr(args, "dataset_file", "coco")),
                          num_feature_levels=args.num_feature_levels, aux_loss=getattr(args, "aux_loss", True),
                          with_box_refine=args.with_box_refine, two_stage=args.two_stage,
                          num_queries_one2one=args.num_queries_one2one, mixed_selection=args.mixed_selection)
