"""Swin Transformer backbone (hierarchical shifted-window attention) for detection.

State-dict layout: ``patch_embed.{proj,norm}``, ``layers.{i}.blocks.{j}.{norm1, attn.{
relative_position_bias_table, relative_position_index, qkv, proj}, norm2, mlp.{fc1,fc2}}``,
``layers.{i}.downsample.{reduction,norm}`` and one LayerNorm ``norm{i}`` per returned stage, so
that detection checkpoints and the ImageNet classification checkpoints load by name.

Inputs of any size are handled by zero padding (to the patch size, to a multiple of the window,
and to even sizes before patch merging); the padding is cropped away again.

``PatchEmbed``, ``PatchMerging``, ``Mlp``, the window helpers and ``DropPath`` are the shared ones
of :mod:`common.layers.swin` / :mod:`common.layers.drop` (timm's ``DropPath``, as in the official
Swin code: kept samples are multiplied by ``1 / keep``, which in training can differ from dividing
by ``keep`` in the last bit).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from common.checkpoint import read_state_dict
from common.layers.drop import drop_path_or_identity
from common.layers.swin import Mlp, PatchEmbed, PatchMerging, pad_nhwc, window_partition, window_reverse

__all__ = ["SwinTransformer", "build_swin", "load_swin_pretrained", "SWIN_CONFIGS"]

logger = logging.getLogger(__name__)

# name -> (embed_dim, depths, num_heads, window_size, pretrain_img_size)
SWIN_CONFIGS = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin_large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin_large_window12": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative-position bias."""

    def __init__(self, dim, window_size, num_heads, qkv_bias=True, qk_scale=None, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        # index[i, j] of the (dy, dx) offset between window positions i and j
        ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
        pos = torch.stack([ys.flatten(), xs.flatten()])            # 2, ws*ws
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0)  # ws*ws, ws*ws, 2
        index = (rel[..., 0] + ws - 1) * (2 * ws - 1) + (rel[..., 1] + ws - 1)
        self.register_buffer("relative_position_index", index.long())
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(bw // nw, nw, heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(x))


class SwinTransformerBlock(nn.Module):
    """(Shifted-)window attention + MLP, pre-norm, with stochastic depth on both branches."""

    def __init__(self, dim, num_heads, window_size=7, shift_size=0, mlp_ratio=4.0, qkv_bias=True,
                 qk_scale=None, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.dim = dim
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = drop_path_or_identity(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x, h, w, shift_mask):
        b, length, c = x.shape
        if length != h * w:
            raise ValueError("input feature has wrong size")
        ws = self.window_size
        shortcut = x
        x = pad_nhwc(self.norm1(x).view(b, h, w, c), ws)
        hp, wp = x.shape[1], x.shape[2]
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
            mask = shift_mask
        else:
            mask = None
        x = window_reverse(self.attn(window_partition(x, ws).view(-1, ws * ws, c), mask=mask), ws, hp, wp)
        if self.shift_size > 0:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """One stage: ``depth`` blocks alternating regular / shifted windows, then optional merging."""

    def __init__(self, dim, depth, num_heads, window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop=0.0, attn_drop=0.0, drop_path=0.0, downsample=True, use_checkpoint=False):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                                 mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, rates[i])
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def _shift_mask(self, h, w, device):
        """Additive mask (0 / -100) that stops attention across the wrap-around of the cyclic shift."""
        ws, ss = self.window_size, self.shift_size
        hp = int(math.ceil(h / ws)) * ws
        wp = int(math.ceil(w / ws)) * ws
        region = torch.zeros((1, hp, wp, 1), device=device)
        label = 0
        for hs in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
            for wsl in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
                region[:, hs, wsl, :] = label
                label += 1
        win = window_partition(region, ws).view(-1, ws * ws)       # nW, ws*ws
        diff = win.unsqueeze(1) - win.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x, h, w):
        mask = self._shift_mask(h, w, x.device)
        for blk in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = cp.checkpoint(blk, x, h, w, mask, use_reentrant=False)
            else:
                x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, h, w, x, h, w
        return x, h, w, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class SwinTransformer(nn.Module):
    """Swin backbone returning ``{str(i): (B, C_i, H_i, W_i)}`` for the stages in ``out_indices``."""

    def __init__(self, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, qk_scale=None,
                 drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True,
                 out_indices=(0, 1, 2, 3), frozen_stages=-1, use_checkpoint=False):
        super().__init__()
        self.pretrain_img_size = pretrain_img_size
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, norm=patch_norm)
        if ape:
            res = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, res, res))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        total = sum(depths)
        # linear stochastic-depth schedule over all blocks (python floats: no tensor on any device)
        rates = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            start = sum(depths[:i])
            self.layers.append(BasicLayer(
                dim=embed_dim * 2 ** i, depth=depths[i], num_heads=num_heads[i], window_size=window_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                attn_drop=attn_drop_rate, drop_path=rates[start:start + depths[i]],
                downsample=i < self.num_layers - 1, use_checkpoint=use_checkpoint))
        self.num_features = [embed_dim * 2 ** i for i in range(self.num_layers)]
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(self.num_features[i]))
        self.apply(self._init_weights)
        self._freeze_stages()

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def _freeze_stages(self):
        if self.frozen_stages >= 0:
            self.patch_embed.eval()
            for p in self.patch_embed.parameters():
                p.requires_grad = False
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad = False
        if self.frozen_stages >= 2:
            self.pos_drop.eval()
            for i in range(self.frozen_stages - 1):
                self.layers[i].eval()
                for p in self.layers[i].parameters():
                    p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        self._freeze_stages()
        return self

    def forward(self, x):
        x = self.patch_embed(x)
        h, w = x.shape[2], x.shape[3]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i, layer in enumerate(self.layers):
            x_out, ho, wo, x, h, w = layer(x, h, w)
            if i in self.out_indices:
                x_out = getattr(self, f"norm{i}")(x_out)
                outs[str(i)] = x_out.view(-1, ho, wo, self.num_features[i]).permute(0, 3, 1, 2).contiguous()
        return outs


def build_swin(name, drop_path_rate=0.2, out_indices=(1, 2, 3), use_checkpoint=True):
    """Swin variant used by DAC-DETR's ``--backbone`` choices; returns ``(model, embed_dim)``."""
    if name not in SWIN_CONFIGS:
        raise NotImplementedError(f"unknown backbone {name!r}; choose from resnet50 or {sorted(SWIN_CONFIGS)}")
    dim, depths, heads, window, img = SWIN_CONFIGS[name]
    model = SwinTransformer(pretrain_img_size=img, embed_dim=dim, depths=depths, num_heads=heads,
                            window_size=window, ape=False, drop_path_rate=drop_path_rate, patch_norm=True,
                            out_indices=out_indices, use_checkpoint=use_checkpoint)
    return model, dim


def _resize_bias_table(table, target_rows):
    """Bicubic resize of a ((2w-1)^2, nH) relative-position table to another window size."""
    src = int(round(table.shape[0] ** 0.5))
    dst = int(round(target_rows ** 0.5))
    grid = table.permute(1, 0).reshape(1, -1, src, src)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(-1, dst * dst).permute(1, 0)


@torch.no_grad()
def load_swin_pretrained(model: SwinTransformer, path: str):
    """Load a classification / detection Swin checkpoint by name (non-strict): ``model`` or
    ``state_dict`` sub-dict, ``module.``/``backbone.`` prefixes removed, relative-position tables
    resized when the window differs, classifier and per-image masks ignored."""
    prefix = "backbone."
    state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in read_state_dict(path).items()}
    own = model.state_dict()
    for k in list(state):
        if k.endswith("relative_position_bias_table") and k in own and state[k].shape != own[k].shape:
            state[k] = _resize_bias_table(state[k].float(), own[k].shape[0]).to(own[k].dtype)
        if k.endswith("relative_position_index") or k.endswith("attn_mask"):
            state.pop(k)
    if "absolute_pos_embed" in state and "absolute_pos_embed" in own:
        state["absolute_pos_embed"] = state["absolute_pos_embed"].reshape(own["absolute_pos_embed"].shape)
    result = model.load_state_dict(state, strict=False)
    logger.info("loaded %s into Swin (missing %d, unexpected %d keys)", path,
                len(result.missing_keys), len(result.unexpected_keys))
    return result
