"""The DAC-DETR detector: backbone + deformable transformer + shared per-layer heads.

Heads: ``class_embed`` and ``bbox_embed`` hold one Linear / 3-layer MLP per decoder layer plus one
for the encoder proposals (index ``dec_layers``). The transformer's decoder holds the *same*
modules (``transformer.decoder.class_embed`` / ``.bbox_embed``), so a state dict lists them twice,
exactly as the official checkpoints do.

Output of ``forward(samples, targets)`` (``targets`` must be None in eval):
``pred_logits`` / ``pred_boxes`` (O-decoder, last layer), ``pred_logits_cdecoder`` /
``pred_boxes_cdecoder`` (C-decoder, last layer), ``aux_outputs`` (the other layers, same four keys),
``enc_outputs`` (encoder proposals, also under the ``_cdecoder`` names, plus ``anchors``); in
training also ``dn_meta`` / ``dn_meta_cdecoder`` with the denoising outputs under
``output_known_lbs_bboxes``. Boxes are normalised (cx, cy, w, h).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..util.misc import NestedTensor, inverse_sigmoid, nested_tensor_from_tensor_list
from .backbone import build_backbone
from .deformable_transformer import build_deformable_transformer
from .dn_components import dn_post_process, prepare_for_cdn

__all__ = ["DeformableDETR", "MLP", "build", "num_classes_for"]


def _clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU in between (none after the last)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return x


class DeformableDETR(nn.Module):
    """DAC-DETR (two-stage Deformable DETR with box refinement, mixed query selection,
    look-forward-twice, contrastive denoising and the parameter-free C-decoder)."""

    def __init__(self, backbone, transformer, num_classes, num_feature_levels, aux_loss=True,
                 with_box_refine=False, two_stage=False, num_queries_one2one=300, num_queries_one2many=0,
                 mixed_selection=False, dn_number=100, dn_box_noise_scale=0.4, dn_label_noise_ratio=0.5,
                 dn_labelbook_size=91):
        super().__init__()
        if not (two_stage and with_box_refine):
            raise NotImplementedError("DAC-DETR needs --two_stage --with_box_refine (the official model has no "
                                      "other working path)")
        self.num_queries = num_queries_one2one
        # registration order fixes the state-dict order: transformer, class_embed, bbox_embed,
        # query_embed, input_proj, backbone, label_enc
        self.transformer = transformer
        hidden_dim = transformer.d_model
        class_embed = nn.Linear(hidden_dim, num_classes)
        bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.class_embed = class_embed
        self.bbox_embed = bbox_embed
        self.num_feature_levels = num_feature_levels
        if mixed_selection:
            self.query_embed = nn.Embedding(num_queries_one2one, hidden_dim)
        if num_feature_levels > 1:
            projs = []
            for ch in backbone.num_channels:
                projs.append(nn.Sequential(nn.Conv2d(ch, hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim)))
            in_ch = backbone.num_channels[-1]
            for _ in range(num_feature_levels - len(backbone.num_channels)):
                projs.append(nn.Sequential(nn.Conv2d(in_ch, hidden_dim, kernel_size=3, stride=2, padding=1),
                                           nn.GroupNorm(32, hidden_dim)))
                in_ch = hidden_dim
            self.input_proj = nn.ModuleList(projs)
        else:
            self.input_proj = nn.ModuleList([nn.Sequential(
                nn.Conv2d(backbone.num_channels[0], hidden_dim, kernel_size=1), nn.GroupNorm(32, hidden_dim))])
        self.backbone = backbone
        self.aux_loss = aux_loss
        self.with_box_refine = with_box_refine
        self.two_stage = two_stage

        prior_prob = 0.01
        with torch.no_grad():
            class_embed.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
            nn.init.constant_(bbox_embed.layers[-1].weight, 0)
            nn.init.constant_(bbox_embed.layers[-1].bias, 0)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        # one head per decoder layer + one for the encoder proposals; the decoder refines boxes
        # with the same modules
        num_pred = transformer.decoder.num_layers + 1
        self.class_embed = _clones(class_embed, num_pred)
        self.bbox_embed = _clones(bbox_embed, num_pred)
        self.transformer.decoder.bbox_embed = self.bbox_embed
        self.transformer.decoder.class_embed = self.class_embed
        with torch.no_grad():
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias[2:], 0.0)
        self.num_queries_one2one = num_queries_one2one
        self.mixed_selection = mixed_selection

        # contrastive denoising (hard-coded in the official model)
        self.dn_number = dn_number
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.dn_labelbook_size = dn_labelbook_size
        self.num_classes = dn_labelbook_size
        self.hidden_dim = hidden_dim
        self.label_enc = nn.Embedding(dn_labelbook_size + 1, hidden_dim)

    # ------------------------------------------------------------------------------------ forward
    def _features(self, samples: NestedTensor):
        features, pos = self.backbone(samples)
        srcs, masks = [], []
        for lvl, feat in enumerate(features):
            src, mask = feat.decompose()
            srcs.append(self.input_proj[lvl](src))
            masks.append(mask)
        for lvl in range(len(srcs), self.num_feature_levels):
            src = self.input_proj[lvl](features[-1].tensors if lvl == len(features) else srcs[-1])
            mask = F.interpolate(samples.mask[None].float(), size=src.shape[-2:]).to(torch.bool)[0]
            srcs.append(src)
            masks.append(mask)
            pos.append(self.backbone[1](NestedTensor(src, mask)).to(src.dtype))
        return srcs, masks, pos

    def forward(self, samples, targets=None):
        if not isinstance(samples, NestedTensor):
            samples = nested_tensor_from_tensor_list(samples)
        srcs, masks, pos = self._features(samples)
        device = srcs[0].device
        query_embeds = self.query_embed.weight[0:self.num_queries, :] if self.mixed_selection else None
        num_proposals = self.transformer.two_stage_num_proposals

        if self.training:
            if targets is None:
                raise ValueError("training forward needs targets (list of dicts with labels/boxes)")
            input_query_label, input_query_bbox, attn_mask, dn_meta, _ = prepare_for_cdn(
                dn_args=(targets, self.dn_number, self.dn_label_noise_ratio, self.dn_box_noise_scale),
                training=True, num_queries=num_proposals, num_classes=self.num_classes,
                hidden_dim=self.hidden_dim, label_enc=self.label_enc)
        else:
            if targets is not None:
                raise ValueError("targets must be None in eval mode")
            input_query_label = input_query_bbox = dn_meta = None
            attn_mask = torch.zeros([num_proposals, num_proposals], dtype=torch.bool, device=device)

        (hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact, hs_cdecoder,
         inter_references_cdecoder, anchors) = self.transformer(
            srcs, masks, pos, query_embeds, attn_mask, input_query_label, input_query_bbox)

        # keeps label_enc in the graph when there are no dn queries (DDP unused-parameter check)
        hs[0] += self.label_enc.weight[0, 0] * 0.0

        add_query = dn_meta["pad_size"] if self.training else 0
        keep = self.num_queries_one2one + add_query
        classes, coords, classes_c, coords_c = [], [], [], []
        for lvl in range(hs.shape[0]):
            if lvl == 0:
                ref = ref_c = init_reference
            else:
                ref, ref_c = inter_references[lvl - 1], inter_references_cdecoder[lvl - 1]
            ref, ref_c = inverse_sigmoid(ref), inverse_sigmoid(ref_c)
            out_class = self.class_embed[lvl](hs[lvl])
            delta = self.bbox_embed[lvl](hs[lvl])
            out_class_c = self.class_embed[lvl](hs_cdecoder[lvl])
            delta_c = self.bbox_embed[lvl](hs_cdecoder[lvl])
            if ref.shape[-1] == 4:
                delta = delta + ref
                delta_c = delta_c + ref_c
            else:
                delta = torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
                delta_c = torch.cat([delta_c[..., :2] + ref_c, delta_c[..., 2:]], -1)
            classes.append(out_class[:, :keep])
            coords.append(delta.sigmoid()[:, :keep])
            classes_c.append(out_class_c[:, :keep])
            coords_c.append(delta_c.sigmoid()[:, :keep])
        classes, coords = torch.stack(classes), torch.stack(coords)
        classes_c, coords_c = torch.stack(classes_c), torch.stack(coords_c)

        if self.training:
            dn_meta_one2one, dn_meta_c = dict(dn_meta), dict(dn_meta)
            if self.dn_number > 0:
                classes, coords, known = dn_post_process(classes, coords, dn_meta_one2one, self.aux_loss,
                                                         self._set_aux_loss_dn, ca=False)
                if known is not None:
                    dn_meta_one2one["output_known_lbs_bboxes"] = known
                classes_c, coords_c, known = dn_post_process(classes_c, coords_c, dn_meta_c, self.aux_loss,
                                                             self._set_aux_loss_dn_cdecoder, ca=True)
                if known is not None:
                    dn_meta_c["output_known_lbs_bboxes"] = known

        out = {
            "pred_logits": classes[-1],
            "pred_boxes": coords[-1],
            "pred_logits_cdecoder": classes_c[-1],
            "pred_boxes_cdecoder": coords_c[-1],
        }
        if self.training:
            out["dn_meta"] = dn_meta_one2one
            out["dn_meta_cdecoder"] = dn_meta_c
        if self.aux_loss:
            out["aux_outputs"] = self._set_aux_loss(classes, coords, classes_c, coords_c)
        enc_coord = enc_outputs_coord_unact.sigmoid()
        out["enc_outputs"] = {
            "pred_logits": enc_outputs_class,
            "pred_boxes": enc_coord,
            "pred_logits_cdecoder": enc_outputs_class,
            "pred_boxes_cdecoder": enc_coord,
            "anchors": anchors,
        }
        return out

    @staticmethod
    def _set_aux_loss_dn(outputs_class, outputs_coord):
        return [{"pred_logits": a, "pred_boxes": b} for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]

    @staticmethod
    def _set_aux_loss_dn_cdecoder(outputs_class, outputs_coord):
        return [{"pred_logits_cdecoder": a, "pred_boxes_cdecoder": b}
                for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]

    @staticmethod
    def _set_aux_loss(outputs_class, outputs_coord, outputs_class_c, outputs_coord_c):
        return [{"pred_logits": a, "pred_boxes": b, "pred_logits_cdecoder": c, "pred_boxes_cdecoder": d}
                for a, b, c, d in zip(outputs_class[:-1], outputs_coord[:-1], outputs_class_c[:-1],
                                      outputs_coord_c[:-1])]


def num_classes_for(dataset_file):
    """91 logits for COCO (category ids 1..90), 250 for COCO panoptic, 20 otherwise."""
    if dataset_file == "coco_panoptic":
        return 250
    return 91 if dataset_file == "coco" else 20


def build(args):
    """The detector for parsed ``main.py`` arguments (criterion: ``criterion.build_criterion``)."""
    if getattr(args, "masks", False):
        raise NotImplementedError("--masks (segmentation head) is not part of DAC-DETR")
    backbone = build_backbone(args)
    transformer = build_deformable_transformer(args)
    return DeformableDETR(
        backbone,
        transformer,
        num_classes=num_classes_for(getattr(args, "dataset_file", "coco")),
        num_feature_levels=args.num_feature_levels,
        aux_loss=getattr(args, "aux_loss", True),
        with_box_refine=args.with_box_refine,
        two_stage=args.two_stage,
        num_queries_one2one=args.num_queries_one2one,
        num_queries_one2many=getattr(args, "num_queries_one2many", 0),
        mixed_selection=args.mixed_selection,
    )
