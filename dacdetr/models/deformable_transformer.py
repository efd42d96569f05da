"""Deformable transformer of DAC-DETR: encoder, two-stage proposals, and the dual decoder.

The decoder runs two query streams through the *same* layers:

* the O-decoder (one-to-one): self-attention -> deformable cross-attention -> FFN;
* the C-decoder (one-to-many, "divide and conquer"): cross-attention -> FFN only. Its layer 0
  starts from the O-decoder's self-attended layer-0 queries, so both streams agree at layer 0.

Both streams refine their own reference boxes with the shared ``bbox_embed`` heads.

Several tensors are deliberately computed in float32 whatever the model dtype (valid ratios,
encoder reference points, proposal grid, proposal frequency table), as in the official code.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ..util.misc import inverse_sigmoid
from .ms_deform_attn import MSDeformAttn, fp32_under_autocast
from .ops import level_sizes
from .ops import level_start_index as msda_level_start_index

__all__ = [
    "DeformableTransformer",
    "DeformableTransformerEncoderLayer",
    "DeformableTransformerEncoder",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerDecoder",
    "build_deformable_transformer",
    "build_deforamble_transformer",
]


def _clones(module, n):
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


def _activation(name):
    if name == "relu":
        return F.relu
    if name == "gelu":
        return F.gelu
    if name == "glu":
        return F.glu
    raise RuntimeError(f"activation should be relu/gelu, not {name}.")


def _with_pos(x, pos):
    return x if pos is None else x + pos


def _run(layer, use_checkpoint, *args, **kwargs):
    if use_checkpoint and torch.is_grad_enabled():
        return cp.checkpoint(layer, *args, use_reentrant=False, **kwargs)
    return layer(*args, **kwargs)


class DeformableTransformerEncoderLayer(nn.Module):
    """Post-norm: deformable self-attention over all levels, then a ReLU FFN."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward_ffn(self, src):
        src = src + self.dropout3(self.linear2(self.dropout2(self.activation(self.linear1(src)))))
        return self.norm2(src)

    @fp32_under_autocast
    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attn = self.self_attn(_with_pos(src, pos), reference_points, src, spatial_shapes, level_start_index,
                              padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        return self.forward_ffn(src)


class DeformableTransformerEncoder(nn.Module):
    def __init__(self, encoder_layer, num_layers, use_checkpoint=False):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers = num_layers
        self.use_checkpoint = use_checkpoint

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios, device):
        """Pixel centres of every level, normalised by the valid (unpadded) size, then projected to
        every level: ``(B, S, L, 2)``. Computed in float32."""
        refs = []
        for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
            ys, xs = torch.meshgrid(
                torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
                torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
                indexing="ij",
            )
            ys = ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(torch.stack((xs, ys), -1))
        ref = torch.cat(refs, 1)
        return ref[:, :, None] * valid_ratios[:, None]

    @fp32_under_autocast
    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos=None, padding_mask=None):
        out = src
        ref = self.get_reference_points(spatial_shapes, valid_ratios, device=src.device)
        for layer in self.layers:
            out = _run(layer, self.use_checkpoint, out, pos, ref, spatial_shapes, level_start_index, padding_mask)
        return out


class DeformableTransformerDecoderLayer(nn.Module):
    """One layer shared by the O- and C-decoder streams (see the module docstring)."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, activation="relu", n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        # deformable cross-attention
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        # self-attention (O-decoder only)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        # FFN
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.activation = _activation(activation)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward_ffn(self, tgt):
        tgt = tgt + self.dropout4(self.linear2(self.dropout3(self.activation(self.linear1(tgt)))))
        return self.norm3(tgt)

    def _cross_ffn(self, tgt, query_pos, ref, src, shapes, start, padding_mask):
        attn = self.cross_attn(_with_pos(tgt, query_pos), ref, src, shapes, start, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        return self.forward_ffn(tgt)

    @fp32_under_autocast
    def forward(self, tgt, tgt_cdecoder, query_pos, reference_points, reference_points_cdecoder, src,
                src_spatial_shapes, level_start_index, src_padding_mask=None, self_attn_mask=None, lid=None):
        # O-decoder: self-attention (sequence-first MHA, optional boolean mask: True = blocked)
        q = k = _with_pos(tgt, query_pos)
        sa = self.self_attn(q.transpose(0, 1), k.transpose(0, 1), tgt.transpose(0, 1),
                            attn_mask=self_attn_mask)[0].transpose(0, 1)
        tgt = self.norm2(tgt + self.dropout2(sa))
        self_attended = tgt
        tgt = self._cross_ffn(tgt, query_pos, reference_points, src, src_spatial_shapes, level_start_index,
                              src_padding_mask)
        # C-decoder: no self-attention; layer 0 starts from the O-decoder's self-attended queries
        if lid == 0:
            tgt_cdecoder = self_attended
        tgt_cdecoder = self._cross_ffn(tgt_cdecoder, query_pos, reference_points_cdecoder, src,
                                       src_spatial_shapes, level_start_index, src_padding_mask)
        return tgt, tgt_cdecoder


class DeformableTransformerDecoder(nn.Module):
    """Runs both streams; with ``bbox_embed`` set (box refinement) every layer refines each
    stream's reference boxes. ``look_forward_twice`` keeps the refined boxes un-detached in the
    returned intermediate references (the next layer always receives detached ones)."""

    def __init__(self, decoder_layer, num_layers, return_intermediate=False, look_forward_twice=False,
                 use_checkpoint=False):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers = num_layers
        self.return_intermediate = return_intermediate
        self.look_forward_twice = look_forward_twice
        self.use_checkpoint = use_checkpoint
        # set by the detector: per-layer heads (box refinement / two-stage proposals)
        self.bbox_embed = None
        self.class_embed = None

    def _refine(self, lid, hidden, ref):
        delta = self.bbox_embed[lid](hidden)
        if ref.shape[-1] == 4:
            return (delta + inverse_sigmoid(ref)).sigmoid()
        xy = delta[..., :2] + inverse_sigmoid(ref)
        return torch.cat([xy, delta[..., 2:]], -1).sigmoid()

    @fp32_under_autocast
    def forward(self, tgt, reference_points, src, src_spatial_shapes, src_level_start_index, src_valid_ratios,
                query_pos=None, src_padding_mask=None, self_attn_mask=None):
        out, out_c = tgt, tgt
        ref, ref_c = reference_points, reference_points
        hs, refs, hs_c, refs_c = [], [], [], []
        for lid, layer in enumerate(self.layers):
            if ref.shape[-1] == 4:
                ratios = torch.cat([src_valid_ratios, src_valid_ratios], -1)[:, None]
            else:
                if ref.shape[-1] != 2:
                    raise ValueError("reference points must have 2 or 4 coordinates")
                ratios = src_valid_ratios[:, None]
            ref_in = ref[:, :, None] * ratios
            ref_in_c = ref_c[:, :, None] * ratios
            out, out_c = _run(layer, self.use_checkpoint, out, out_c, query_pos, ref_in, ref_in_c, src,
                              src_spatial_shapes, src_level_start_index, src_padding_mask, self_attn_mask, lid=lid)
            new_ref, new_ref_c = ref, ref_c
            if self.bbox_embed is not None:
                new_ref = self._refine(lid, out, ref)
                new_ref_c = self._refine(lid, out_c, ref_c)
                ref, ref_c = new_ref.detach(), new_ref_c.detach()
            if self.return_intermediate:
                hs.append(out)
                hs_c.append(out_c)
                refs.append(new_ref if self.look_forward_twice else ref)
                refs_c.append(new_ref_c if self.look_forward_twice else ref_c)
        if self.return_intermediate:
            return torch.stack(hs), torch.stack(refs), torch.stack(hs_c), torch.stack(refs_c)
        return out[None], ref[None], out_c[None], ref_c[None]


class DeformableTransformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, activation="relu", return_intermediate_dec=False, num_feature_levels=4,
                 dec_n_points=4, enc_n_points=4, two_stage=False, two_stage_num_proposals=600,
                 look_forward_twice=False, mixed_selection=False, use_checkpoint=False):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        enc_layer = DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, activation,
                                                      num_feature_levels, nhead, enc_n_points)
        self.encoder = DeformableTransformerEncoder(enc_layer, num_encoder_layers, use_checkpoint)
        dec_layer = DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, activation,
                                                      num_feature_levels, nhead, dec_n_points)
        self.decoder = DeformableTransformerDecoder(dec_layer, num_decoder_layers, return_intermediate_dec,
                                                    look_forward_twice, use_checkpoint)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.mixed_selection = mixed_selection
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)
        nn.init.normal_(self.level_embed)

    def get_proposal_pos_embed(self, proposals):
        """Sine embedding of unnormalised boxes (B, Q, 4) -> (B, Q, 2 * d_model): d_model / 2
        frequencies per coordinate (128 for the official d_model 256; float32 frequency table),
        coordinates in (cx, cy, w, h) order."""
        num_feats, temperature, scale = self.d_model // 2, 10000, 2 * math.pi
        freq = torch.arange(num_feats, dtype=torch.float32, device=proposals.device)
        freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / num_feats)
        angles = proposals.sigmoid() * scale
        pos = angles[:, :, :, None] / freq
        return torch.stack((pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()), dim=4).flatten(2)

    def gen_encoder_output_proposals(self, memory, memory_padding_mask, spatial_shapes):
        """One proposal per encoder token: its cell centre (normalised by the valid size) and a
        size 0.05 * 2^level, as logits (float32); +inf where padded or not in (0.01, 0.99).
        Returns the projected memory (zeroed at those tokens) and the proposals."""
        n = memory.shape[0]
        proposals = []
        start = 0
        for lvl, (h, w) in enumerate(level_sizes(spatial_shapes)):
            mask_l = memory_padding_mask[:, start:start + h * w].view(n, h, w, 1)
            valid_h = torch.sum(~mask_l[:, :, 0, 0], 1)
            valid_w = torch.sum(~mask_l[:, 0, :, 0], 1)
            gy, gx = torch.meshgrid(
                torch.linspace(0, h - 1, h, dtype=torch.float32, device=memory.device),
                torch.linspace(0, w - 1, w, dtype=torch.float32, device=memory.device),
                indexing="ij",
            )
            grid = torch.cat([gx.unsqueeze(-1), gy.unsqueeze(-1)], -1)
            scale = torch.cat([valid_w.unsqueeze(-1), valid_h.unsqueeze(-1)], 1).view(n, 1, 1, 2)
            grid = (grid.unsqueeze(0).expand(n, -1, -1, -1) + 0.5) / scale
            wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
            proposals.append(torch.cat((grid, wh), -1).view(n, -1, 4))
            start += h * w
        output_proposals = torch.cat(proposals, 1)
        valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).all(-1, keepdim=True)
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        output_proposals = output_proposals.masked_fill(memory_padding_mask.unsqueeze(-1), float("inf"))
        output_proposals = output_proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(memory_padding_mask.unsqueeze(-1), float(0))
        output_memory = output_memory.masked_fill(~valid, float(0))
        output_memory = self.enc_output_norm(self.enc_output(output_memory))
        return output_memory, output_proposals

    @staticmethod
    def get_valid_ratio(mask):
        """(B, 2) float32 fraction of unpadded columns and rows: [valid_W / W, valid_H / H]."""
        _, h, w = mask.shape
        valid_h = torch.sum(~mask[:, :, 0], 1)
        valid_w = torch.sum(~mask[:, 0, :], 1)
        return torch.stack([valid_w.float() / w, valid_h.float() / h], -1)

    @fp32_under_autocast
    def forward(self, srcs, masks, pos_embeds, query_embed=None, self_attn_mask=None, input_query_label=None,
                input_query_bbox=None):
        """Returns ``(hs, init_reference, inter_references, enc_outputs_class, enc_outputs_coord_unact,
        hs_cdecoder, inter_references_cdecoder, anchors)``.

        ``init_reference`` is the (sigmoid) reference the decoder starts from, denoising boxes
        first when ``input_query_bbox`` is given (training).
        """
        if not self.two_stage:
            raise NotImplementedError("DAC-DETR runs the two-stage transformer only (pass --two_stage)")
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((h, w))
            src_flat.append(src.flatten(2).transpose(1, 2))
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
        src_flat = torch.cat(src_flat, 1)
        mask_flat = torch.cat(mask_flat, 1)
        pos_flat = torch.cat(pos_flat, 1)
        # the level sizes stay Python integers (no tensor round trip, no host sync: compile- and export-clean)
        spatial_shapes = tuple(shapes)
        level_start_index = msda_level_start_index(spatial_shapes, device=src_flat.device)
        valid_ratios = torch.stack([self.get_valid_ratio(m) for m in masks], 1)

        memory = self.encoder(src_flat, spatial_shapes, level_start_index, valid_ratios, pos_flat, mask_flat)

        bs, _, c = memory.shape
        output_memory, output_proposals = self.gen_encoder_output_proposals(memory, mask_flat, spatial_shapes)
        head = self.decoder.num_layers
        enc_outputs_class = self.decoder.class_embed[head](output_memory)
        enc_outputs_coord_unact = self.decoder.bbox_embed[head](output_memory) + output_proposals

        topk = self.two_stage_num_proposals
        topk_idx = torch.topk(enc_outputs_class[..., 0], topk, dim=1)[1]
        topk_coords_unact = torch.gather(enc_outputs_coord_unact, 1, topk_idx.unsqueeze(-1).repeat(1, 1, 4))
        topk_coords_unact = topk_coords_unact.detach()

        boxes_unact = topk_coords_unact
        has_dn = input_query_bbox is not None
        if has_dn:
            boxes_unact = torch.cat([input_query_bbox.to(topk_coords_unact.dtype), topk_coords_unact], dim=1)
        pos_trans_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(boxes_unact)))
        if self.mixed_selection:
            # content queries are learned, positional queries come from the selected proposals
            query_pos, _ = torch.split(pos_trans_out, c, dim=2)
            tgt = query_embed.unsqueeze(0).expand(bs, -1, -1)
        else:
            query_pos, tgt = torch.split(pos_trans_out, c, dim=2)
            if has_dn:
                tgt = tgt[:, input_query_bbox.shape[1]:]
        if has_dn:
            tgt = torch.cat([input_query_label.to(tgt.dtype), tgt], dim=1)
        reference_points = boxes_unact.sigmoid()
        init_reference = reference_points

        hs, inter_refs, hs_c, inter_refs_c = self.decoder(
            tgt, reference_points, memory, spatial_shapes, level_start_index, valid_ratios, query_pos, mask_flat,
            self_attn_mask)
        return (hs, init_reference, inter_refs, enc_outputs_class, enc_outputs_coord_unact, hs_c, inter_refs_c,
                output_proposals.sigmoid())


def build_deformable_transformer(args):
    return DeformableTransformer(
        d_model=args.hidden_dim,
        nhead=args.nheads,
        num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers,
        dim_feedforward=args.dim_feedforward,
        dropout=args.dropout,
        activation="relu",
        return_intermediate_dec=True,
        num_feature_levels=args.num_feature_levels,
        dec_n_points=args.dec_n_points,
        enc_n_points=args.enc_n_points,
        two_stage=args.two_stage,
        two_stage_num_proposals=args.num_queries_one2one + getattr(args, "num_queries_one2many", 0),
        mixed_selection=args.mixed_selection,
        look_forward_twice=args.look_forward_twice,
        use_checkpoint=getattr(args, "use_checkpoint", False),
    )


# the official spelling, kept as an alias
build_deforamble_transformer = build_deformable_transformer
