"""Swin building blocks shared by DAC-DETR's Swin backbone and DWNet (a Swin-T/B macro-architecture).

Parameter names are those of the official Swin code, so official checkpoints load by name:

* :class:`PatchEmbed` -- ``proj`` Conv2d(in_chans, C, k=s=patch_size, bias) and ``norm``
  LayerNorm(C) (absent with ``norm=False``);
* :class:`PatchMerging` -- ``reduction`` Linear(4C, 2C, bias=False), registered before ``norm``
  LayerNorm(4C), as in the official code;
* :class:`Mlp` -- timm's ``Mlp`` (``fc1`` Linear(C, hidden), exact-erf GELU, dropout, ``fc2``
  Linear(hidden, C), dropout): keys, order and math are the official Swin / DWNet ``Mlp``'s;
* :func:`window_partition` / :func:`window_reverse` and :func:`pad_nhwc` (zero padding of a
  ``(B, H, W, C)`` map at the bottom / right to a multiple of the window).

Why not timm's ``PatchEmbed`` / ``PatchMerging``: timm's ``PatchMerging`` registers ``norm``
before ``reduction`` (a different state_dict order than the official files) and takes
``(B, H, W, C)``; timm's ``PatchEmbed`` applies its norm after the output-format change, so a
channels-first output with LayerNorm (what the detection backbones return) is not available.

Both variants of each block that the papers need are arguments here:

* ``PatchEmbed(flatten=False)`` returns ``(B, C, H', W')`` (detection backbones, DAC-DETR, DWNet's
  mmdet/mmseg backbone); ``flatten=True`` returns tokens ``(B, H'*W', C)`` (classification Swin /
  DWNet). Inputs are zero-padded right/bottom to a multiple of the patch size (a no-op at 224);
  ``img_size=...`` instead requires exactly that input size, as the classification code does.
* ``PatchMerging`` takes tokens ``(B, H*W, C)`` and the grid size, either per call
  (``forward(x, h, w)``, detection) or fixed at construction (``input_resolution=(H, W)``,
  classification); or a ``(B, C, H, W)`` map, giving a ``(B, 2C, H', W')`` map (DWNet). Odd H or W
  get one zero row / column at the bottom / right first, so the output grid is
  ``((H + 1) // 2, (W + 1) // 2)``; at even sizes this is the classification code's operation exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

__all__ = ["PatchEmbed", "PatchMerging", "Mlp", "window_partition", "window_reverse", "pad_nhwc"]


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches -> Conv2d projection -> optional LayerNorm over channels.

    Args:
        patch_size: patch side (4 in Swin / DWNet).
        in_chans, embed_dim: input channels and C.
        norm: add ``norm`` = ``norm_layer(embed_dim)`` (Swin's ``patch_norm``).
        flatten: return tokens ``(B, H'*W', C)`` instead of ``(B, C, H', W')``.
        img_size: if given, only inputs of exactly this (H, W) are accepted (classification models
            built for one resolution); ``patches_resolution`` is then ``img_size // patch_size``.
        norm_layer: the norm class (``nn.LayerNorm``).
    """

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm=True, flatten=False, img_size=None,
                 norm_layer=nn.LayerNorm):
        super().__init__()
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.flatten = flatten
        self.img_size = _pair(img_size) if img_size is not None else None
        self.patches_resolution = (None if self.img_size is None else
                                   (self.img_size[0] // patch_size, self.img_size[1] // patch_size))
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm else None

    def forward(self, x):
        p = self.patch_size
        h, w = x.shape[-2:]
        if self.img_size is not None and (h, w) != self.img_size:
            raise ValueError(f"PatchEmbed: input size {h}x{w} does not match the model's "
                             f"{self.img_size[0]}x{self.img_size[1]}")
        if w % p:
            x = F.pad(x, (0, p - w % p))
        if h % p:
            x = F.pad(x, (0, 0, 0, p - h % p))
        x = self.proj(x)
        hh, ww = x.shape[-2:]
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
            return x if self.norm is None else self.norm(x)
        if self.norm is not None:
            x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, self.embed_dim, hh, ww)
        return x


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat (order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets) ->
    LayerNorm(4C) -> Linear(4C, 2C, bias=False), on tokens ``(B, H*W, C)``.

    Args:
        dim: C.
        norm_layer: the norm class (``nn.LayerNorm``).
        input_resolution: fixed ``(H, W)`` used when ``forward`` is called without ``h, w``.
    """

    def __init__(self, dim, norm_layer=nn.LayerNorm, input_resolution=None):
        super().__init__()
        self.dim = dim
        self.input_resolution = tuple(input_resolution) if input_resolution is not None else None
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x, h=None, w=None):
        if x.dim() == 4:  # a (B, C, H, W) map -> (B, 2C, (H + 1) // 2, (W + 1) // 2), same math
            return self._forward_map(x)
        if h is None or w is None:
            if self.input_resolution is None:
                raise ValueError("PatchMerging needs (h, w): pass them or set input_resolution")
            h, w = self.input_resolution
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"PatchMerging: {length} tokens do not form a {h}x{w} grid")
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))

    def _forward_map(self, x):
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x)).permute(0, 3, 1, 2)

    def extra_repr(self):
        return f"dim={self.dim}, input_resolution={self.input_resolution}"


def pad_nhwc(x, multiple):
    """Zero-pad a ``(B, H, W, C)`` map at the bottom and right so H and W are multiples of
    ``multiple`` (unchanged if they already are). Crop back with ``[:, :H, :W]``."""
    h, w = x.shape[1], x.shape[2]
    pad_r = (multiple - w % multiple) % multiple
    pad_b = (multiple - h % multiple) % multiple
    return F.pad(x, (0, 0, 0, pad_r, 0, pad_b))


def window_partition(x, window_size):
    """``(B, H, W, C)`` -> ``(B * H/ws * W/ws, ws, ws, C)``, windows in row-major order per image.
    H and W must be multiples of ``window_size`` (see :func:`pad_nhwc`)."""
    b, h, w, c = x.shape
    ws = window_size
    if h % ws or w % ws:
        raise ValueError(f"window_partition: a {h}x{w} map is not a multiple of the window {ws}")
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c)


def window_reverse(windows, window_size, h, w):
    """Inverse of :func:`window_partition`: ``(B * nW, ws, ws, C)`` (or ``(B * nW, ws*ws, C)``)
    -> ``(B, H, W, C)``."""
    ws = window_size
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)
