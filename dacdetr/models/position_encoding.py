"""Positional encodings for feature maps.

The sine encoding is always evaluated in float32 (cumulative sums, normalisation and the
frequency table), whatever the feature dtype; callers cast the result to the feature dtype.
Running the whole model in float64 therefore still has this float32 step, as the official code.
"""
import math

import torch
from torch import nn

from ..util.misc import NestedTensor

__all__ = ["PositionEmbeddingSine", "PositionEmbeddingLearned", "build_position_encoding"]


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding of the (normalised) row and column index of unpadded pixels.

    Output ``(B, 2 * num_pos_feats, H, W)``: the first half encodes y, the second half x; within
    each half, even frequencies use sin and odd ones cos, interleaved.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list: NestedTensor):
        mask = tensor_list.mask
        if mask is None:
            raise ValueError("PositionEmbeddingSine needs a padding mask")
        valid = ~mask
        y = valid.cumsum(1, dtype=torch.float32)
        x = valid.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            x = (x - 0.5) / (x[:, :, -1:] + eps) * self.scale
        freq = torch.arange(self.num_pos_feats, dtype=torch.float32, device=mask.device)
        freq = self.temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / self.num_pos_feats)
        px = x[:, :, :, None] / freq
        py = y[:, :, :, None] / freq
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


class PositionEmbeddingLearned(nn.Module):
    """Learned absolute encoding: 50 row + 50 column embeddings, concatenated (x first)."""

    def __init__(self, num_pos_feats=256):
        super().__init__()
        self.row_embed = nn.Embedding(50, num_pos_feats)
        self.col_embed = nn.Embedding(50, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, tensor_list: NestedTensor):
        x = tensor_list.tensors
        h, w = x.shape[-2:]
        cols = self.col_embed(torch.arange(w, device=x.device))
        rows = self.row_embed(torch.arange(h, device=x.device))
        pos = torch.cat([cols.unsqueeze(0).expand(h, -1, -1), rows.unsqueeze(1).expand(-1, w, -1)], dim=-1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


def build_position_encoding(args):
    steps = args.hidden_dim // 2
    kind = getattr(args, "position_embedding", "sine")
    if kind in ("v2", "sine"):
        return PositionEmbeddingSine(steps, normalize=True)
    if kind in ("v3", "learned"):
        return PositionEmbeddingLearned(steps)
    raise ValueError(f"not supported {kind}")
