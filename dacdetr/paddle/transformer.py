"""Deformable transformer of the Paddle port: MSDeformAttn, the encoder, two-stage proposals and the
dual (O / C) decoder sharing one stack of layers.

Weights use Paddle's conventions (``nn.Linear.weight`` is (in, out)); the names match the PyTorch
model so :mod:`dacdetr.paddle.convert` maps one onto the other. As in the official model, the valid
ratios, encoder reference points, proposal grid and frequency tables are float32 whatever the model
dtype.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .ops import inverse_sigmoid, ms_deform_attn_core

__all__ = ["MSDeformAttn", "MultiheadAttention", "DeformableTransformer", "build_deformable_transformer",
           "xavier_uniform_", "constant_"]


def xavier_uniform_(param, gain=1.0):
    """Xavier-uniform fill of a Paddle parameter; fans follow the PyTorch convention of the same weight
    ((in, out) Linear weights are the transpose of PyTorch's (out, in))."""
    shape = list(param.shape)
    if len(shape) == 2:
        fan_in, fan_out = shape[0], shape[1]
    else:
        rf = int(np.prod(shape[2:]))
        fan_in, fan_out = shape[1] * rf, shape[0] * rf
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    param.set_value(paddle.uniform(shape, dtype=param.dtype, min=-bound, max=bound))


def constant_(param, value):
    param.set_value(paddle.full(param.shape, value, dtype=param.dtype))


def _cast(x, ref):
    return x if x.dtype == ref.dtype else x.astype(ref.dtype)


def _fp32(x):
    """Half-precision (float16 / bfloat16) tensors as float32; anything else unchanged."""
    return x.astype("float32") if x.dtype in (paddle.float16, paddle.bfloat16) else x


class MSDeformAttn(nn.Layer):
    """Multi-scale deformable attention (d_model, L levels, M heads, P points per level and head)."""

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Offsets on a star (head m towards angle 2 pi m / M, point p at distance p + 1), uniform
        attention, Xavier projections."""
        constant_(self.sampling_offsets.weight, 0.0)
        angle = np.arange(self.n_heads, dtype=np.float32) * np.float32(2.0 * math.pi / self.n_heads)
        star = np.stack([np.cos(angle), np.sin(angle)], -1)
        star = star / np.abs(star).max(-1, keepdims=True)
        star = np.tile(star.reshape(self.n_heads, 1, 1, 2), (1, self.n_levels, self.n_points, 1))
        star = star * np.arange(1, self.n_points + 1, dtype=np.float32).reshape(1, 1, -1, 1)
        self.sampling_offsets.bias.set_value(paddle.to_tensor(star.reshape(-1).astype(np.float32)).astype(
            self.sampling_offsets.bias.dtype))
        constant_(self.attention_weights.weight, 0.0)
        constant_(self.attention_weights.bias, 0.0)
        xavier_uniform_(self.value_proj.weight)
        constant_(self.value_proj.bias, 0.0)
        xavier_uniform_(self.output_proj.weight)
        constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, spatial_shapes, padding_mask=None):
        """query (B, Lq, C); reference_points (B, Lq, L, 2) points or (B, Lq, L, 4) boxes; input_flatten
        (B, S, C); spatial_shapes: L python pairs [H, W]; padding_mask (B, S) True on padding.
        Under ``paddle.amp.auto_cast`` the whole layer runs in float32 (half-precision inputs cast, mixed
        precision off inside), as the PyTorch layer does under CUDA autocast."""
        if paddle.amp.is_autocast_enabled():
            with paddle.amp.auto_cast(enable=False):
                return self._forward(_fp32(query), _fp32(reference_points), _fp32(input_flatten), spatial_shapes,
                                     padding_mask)
        return self._forward(query, reference_points, input_flatten, spatial_shapes, padding_mask)

    def _forward(self, query, reference_points, input_flatten, spatial_shapes, padding_mask):
        n, len_q, _ = query.shape
        len_in = input_flatten.shape[1]
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = paddle.where(padding_mask[..., None], paddle.zeros_like(value), value)
        value = value.reshape([n, len_in, m, self.d_model // m])
        offsets = self.sampling_offsets(query).reshape([n, len_q, m, lv, p, 2])
        weights = F.softmax(self.attention_weights(query).reshape([n, len_q, m, lv * p]), -1)
        weights = weights.reshape([n, len_q, m, lv, p])
        ref = _cast(reference_points, offsets)
        if ref.shape[-1] == 2:
            norm = paddle.to_tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype)
            loc = ref[:, :, None, :, None, :] + offsets / norm[None, None, None, :, None, :]
        elif ref.shape[-1] == 4:
            loc = ref[:, :, None, :, None, :2] + offsets / p * ref[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {ref.shape[-1]}")
        return self.output_proj(ms_deform_attn_core(value, spatial_shapes, loc, weights))


class MultiheadAttention(nn.Layer):
    """Sequence-first multi-head attention with packed input projections (``in_proj_weight`` (C, 3C),
    ``in_proj_bias``) and ``out_proj``; a boolean ``attn_mask`` (Lq, Lk) blocks where True."""

    def __init__(self, embed_dim, num_heads, dropout=0.0):
        super().__init__()
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.in_proj_weight = self.create_parameter([embed_dim, 3 * embed_dim])
        self.in_proj_bias = self.create_parameter([3 * embed_dim], is_bias=True)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        xavier_uniform_(self.in_proj_weight)
        constant_(self.in_proj_bias, 0.0)
        constant_(self.out_proj.bias, 0.0)

    def forward(self, query, key, value, attn_mask=None):
        lq, b, c = query.shape
        lk = key.shape[0]
        h, hd = self.num_heads, c // self.num_heads
        wq, wk, wv = paddle.split(self.in_proj_weight, 3, axis=1)
        bq, bk, bv = paddle.split(self.in_proj_bias, 3, axis=0)
        q = F.linear(query, wq, bq).reshape([lq, b * h, hd]).transpose([1, 0, 2])
        k = F.linear(key, wk, bk).reshape([lk, b * h, hd]).transpose([1, 0, 2])
        v = F.linear(value, wv, bv).reshape([lk, b * h, hd]).transpose([1, 0, 2])
        attn = paddle.bmm(q * math.sqrt(1.0 / hd), k.transpose([0, 2, 1]))
        if attn_mask is not None:
            attn = paddle.where(attn_mask[None], paddle.full_like(attn, float("-inf")), attn)
        attn = F.softmax(attn, -1)
        if self.dropout > 0 and self.training:
            attn = F.dropout(attn, self.dropout)
        out = paddle.bmm(attn, v).transpose([1, 0, 2]).reshape([lq, b, c])
        return self.out_proj(out)


def _with_pos(x, pos):
    return x if pos is None else x + pos


class EncoderLayer(nn.Layer):
    """Post-norm deformable self-attention + ReLU FFN."""

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, ref, shapes, padding_mask):
        src = self.norm1(src + self.dropout1(self.self_attn(_with_pos(src, pos), ref, src, shapes, padding_mask)))
        return self.norm2(src + self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Layer):
    """Shared by both streams: O-decoder = self-attn -> cross-attn -> FFN; C-decoder = cross-attn -> FFN,
    its layer 0 starting from the O-decoder's self-attended queries."""

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def _cross_ffn(self, tgt, query_pos, ref, src, shapes, padding_mask):
        tgt = self.norm1(tgt + self.dropout1(self.cross_attn(_with_pos(tgt, query_pos), ref, src, shapes,
                                                             padding_mask)))
        return self.norm3(tgt + self.dropout4(self.linear2(self.dropout3(F.relu(self.linear1(tgt))))))

    def forward(self, tgt, tgt_c, query_pos, ref, ref_c, src, shapes, padding_mask, attn_mask, lid):
        q = _with_pos(tgt, query_pos).transpose([1, 0, 2])
        sa = self.self_attn(q, q, tgt.transpose([1, 0, 2]), attn_mask=attn_mask).transpose([1, 0, 2])
        tgt = self.norm2(tgt + self.dropout2(sa))
        if lid == 0:
            tgt_c = tgt
        tgt = self._cross_ffn(tgt, query_pos, ref, src, shapes, padding_mask)
        tgt_c = self._cross_ffn(tgt_c, query_pos, ref_c, src, shapes, padding_mask)
        return tgt, tgt_c


class Encoder(nn.Layer):
    def __init__(self, make_layer, num_layers):
        super().__init__()
        self.layers = nn.LayerList([make_layer() for _ in range(num_layers)])
        self.num_layers = num_layers

    @staticmethod
    def get_reference_points(shapes, valid_ratios):
        """Pixel centres per level normalised by the valid size, projected on every level (B, S, L, 2), float32."""
        refs = []
        for lvl, (h, w) in enumerate(shapes):
            ys, xs = paddle.meshgrid(paddle.linspace(0.5, h - 0.5, h, dtype="float32"),
                                     paddle.linspace(0.5, w - 0.5, w, dtype="float32"))
            ys = ys.reshape([-1])[None] / (valid_ratios[:, None, lvl, 1] * h)
            xs = xs.reshape([-1])[None] / (valid_ratios[:, None, lvl, 0] * w)
            refs.append(paddle.stack([xs, ys], -1))
        ref = paddle.concat(refs, 1)
        return ref[:, :, None] * valid_ratios[:, None]

    def forward(self, src, shapes, valid_ratios, pos, padding_mask):
        ref = self.get_reference_points(shapes, valid_ratios)
        out = src
        for layer in self.layers:
            out = layer(out, pos, ref, shapes, padding_mask)
        return out


class Decoder(nn.Layer):
    def __init__(self, make_layer, num_layers, look_forward_twice=False):
        super().__init__()
        self.layers = nn.LayerList([make_layer() for _ in range(num_layers)])
        self.num_layers = num_layers
        self.look_forward_twice = look_forward_twice
        self.bbox_embed = None  # set by the detector (same heads as its bbox_embed / class_embed)
        self.class_embed = None

    def forward(self, tgt, ref, src, shapes, valid_ratios, query_pos, padding_mask, attn_mask):
        out = out_c = tgt
        ref_c = ref
        hs, refs, hs_c, refs_c = [], [], [], []
        ratios = paddle.concat([valid_ratios, valid_ratios], -1)[:, None]
        for lid, layer in enumerate(self.layers):
            ref_in = _cast(ref[:, :, None], query_pos) * _cast(ratios, query_pos)
            ref_in_c = _cast(ref_c[:, :, None], query_pos) * _cast(ratios, query_pos)
            out, out_c = layer(out, out_c, query_pos, ref_in, ref_in_c, src, shapes, padding_mask, attn_mask, lid)
            new_ref = F.sigmoid(self.bbox_embed[lid](out) + inverse_sigmoid(ref))
            new_ref_c = F.sigmoid(self.bbox_embed[lid](out_c) + inverse_sigmoid(ref_c))
            ref, ref_c = new_ref.detach(), new_ref_c.detach()
            hs.append(out)
            hs_c.append(out_c)
            refs.append(new_ref if self.look_forward_twice else ref)
            refs_c.append(new_ref_c if self.look_forward_twice else ref_c)
        return hs, refs, hs_c, refs_c


class DeformableTransformer(nn.Layer):
    """Two-stage deformable transformer with mixed query selection (the DAC-DETR configuration)."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=1024,
                 dropout=0.1, num_feature_levels=4, dec_n_points=4, enc_n_points=4, two_stage=True,
                 two_stage_num_proposals=300, look_forward_twice=False, mixed_selection=True):
        super().__init__()
        if not (two_stage and mixed_selection):
            raise NotImplementedError("DAC-DETR needs --two_stage and --mixed_selection")
        self.d_model, self.nhead = d_model, nhead
        self.two_stage = two_stage
        self.two_stage_num_proposals = two_stage_num_proposals
        self.mixed_selection = mixed_selection
        # one constructor call per layer (no deep copies: every parameter gets its own name)
        self.encoder = Encoder(lambda: EncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                                    enc_n_points), num_encoder_layers)
        self.decoder = Decoder(lambda: DecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                                    dec_n_points), num_decoder_layers, look_forward_twice)
        self.level_embed = self.create_parameter([num_feature_levels, d_model],
                                                 default_initializer=nn.initializer.Normal(0.0, 1.0))
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
        self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        for name, p in self.named_parameters():
            if len(p.shape) > 1 and name != "level_embed":
                xavier_uniform_(p)
        for m in self.sublayers():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    def get_proposal_pos_embed(self, proposals):
        """Sine embedding of box logits (B, Q, 4) -> (B, Q, 2 d_model), (cx, cy, w, h) order."""
        num_feats = self.d_model // 2
        i = paddle.arange(num_feats, dtype="float32")
        freq = (10000 ** (2 * paddle.floor(i / 2) / num_feats)).astype(proposals.dtype)
        pos = (F.sigmoid(proposals) * (2 * math.pi))[:, :, :, None] / freq
        return paddle.stack([pos[:, :, :, 0::2].sin(), pos[:, :, :, 1::2].cos()], axis=4).flatten(2)

    def gen_encoder_output_proposals(self, memory, mask_flat, shapes):
        n = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            mask_l = mask_flat[:, start:start + h * w].reshape([n, h, w])
            valid_h = paddle.logical_not(mask_l[:, :, 0]).astype("float32").sum(1)
            valid_w = paddle.logical_not(mask_l[:, 0, :]).astype("float32").sum(1)
            gy, gx = paddle.meshgrid(paddle.linspace(0, h - 1, h, dtype="float32"),
                                     paddle.linspace(0, w - 1, w, dtype="float32"))
            grid = paddle.stack([gx, gy], -1)
            scale = paddle.stack([valid_w, valid_h], -1).reshape([n, 1, 1, 2])
            grid = (grid[None].expand([n, h, w, 2]) + 0.5) / scale
            wh = paddle.ones_like(grid) * (0.05 * (2.0 ** lvl))
            proposals.append(paddle.concat([grid, wh], -1).reshape([n, -1, 4]))
            start += h * w
        props = paddle.concat(proposals, 1)
        valid = ((props > 0.01) & (props < 0.99)).all(-1, keepdim=True)
        props = paddle.log(props / (1 - props))
        invalid = paddle.logical_or(mask_flat[..., None], paddle.logical_not(valid))
        props = paddle.where(invalid, paddle.full_like(props, float("inf")), props)
        out_memory = paddle.where(invalid, paddle.zeros_like(memory), memory)
        return self.enc_output_norm(self.enc_output(out_memory)), props

    @staticmethod
    def get_valid_ratio(mask):
        _, h, w = mask.shape
        valid_h = paddle.logical_not(mask[:, :, 0]).astype("float32").sum(1)
        valid_w = paddle.logical_not(mask[:, 0, :]).astype("float32").sum(1)
        return paddle.stack([valid_w / w, valid_h / h], -1)

    def forward(self, srcs, masks, pos_embeds, query_embed, attn_mask, dn_label=None, dn_bbox=None):
        src_flat, mask_flat, pos_flat, shapes = [], [], [], []
        for lvl, (src, mask, pos) in enumerate(zip(srcs, masks, pos_embeds)):
            _, _, h, w = src.shape
            shapes.append((int(h), int(w)))
            src_flat.append(src.flatten(2).transpose([0, 2, 1]))
            mask_flat.append(mask.flatten(1))
            pos_flat.append(pos.flatten(2).transpose([0, 2, 1]) + self.level_embed[lvl].reshape([1, 1, -1]))
        src_flat = paddle.concat(src_flat, 1)
        mask_flat = paddle.concat(mask_flat, 1)
        pos_flat = paddle.concat(pos_flat, 1)
        valid_ratios = paddle.stack([self.get_valid_ratio(m) for m in masks], 1)

        memory = self.encoder(src_flat, shapes, valid_ratios, pos_flat, mask_flat)
        bs, _, c = memory.shape
        out_memory, props = self.gen_encoder_output_proposals(memory, mask_flat, shapes)
        head = self.decoder.num_layers
        enc_class = self.decoder.class_embed[head](out_memory)
        enc_coord_unact = self.decoder.bbox_embed[head](out_memory) + props.astype(out_memory.dtype)
        topk_idx = paddle.topk(enc_class[..., 0], self.two_stage_num_proposals, axis=1)[1]
        topk_coords = paddle.take_along_axis(enc_coord_unact, topk_idx[..., None].expand(
            [bs, self.two_stage_num_proposals, 4]), axis=1).detach()
        boxes_unact = topk_coords
        if dn_bbox is not None:
            boxes_unact = paddle.concat([dn_bbox.astype(topk_coords.dtype), topk_coords], 1)
        pos_out = self.pos_trans_norm(self.pos_trans(self.get_proposal_pos_embed(boxes_unact)))
        query_pos = pos_out[:, :, :c]
        tgt = query_embed[None].expand([bs, query_embed.shape[0], c])
        if dn_label is not None:
            tgt = paddle.concat([dn_label.astype(tgt.dtype), tgt], 1)
        init_reference = F.sigmoid(boxes_unact)
        hs, refs, hs_c, refs_c = self.decoder(tgt, init_reference, memory, shapes, valid_ratios, query_pos,
                                              mask_flat, attn_mask)
        return hs, init_reference, refs, enc_class, enc_coord_unact, hs_c, refs_c, F.sigmoid(props)


def build_deformable_transformer(args):
    return DeformableTransformer(
        d_model=args.hidden_dim, nhead=args.nheads, num_encoder_layers=args.enc_layers,
        num_decoder_layers=args.dec_layers, dim_feedforward=args.dim_feedforward, dropout=args.dropout,
        num_feature_levels=args.num_feature_levels, dec_n_points=args.dec_n_points,
        enc_n_points=args.enc_n_points, two_stage=args.two_stage,
        two_stage_num_proposals=args.num_queries_one2one + getattr(args, "num_queries_one2many", 0),
        look_forward_twice=args.look_forward_twice, mixed_selection=args.mixed_selection)
