"""DWNet (Han et al., "On the Connection between Local Attention and Dynamic Depth-wise Convolution",
ICLR 2022): a Swin-T/B macro-architecture whose window attention is replaced by a 7x7 depth-wise convolution
(static: DWNet; per-image dynamic kernel: D-DWNet; per-position dynamic kernel: I-D-DWNet).

State_dict keys, shapes and order are the official classification model's (``models/dwnet.py``), so the
released checkpoints load with ``strict=True``. Differences from the official code, none of which changes the
math at the official 224 resolution:

* ``dynamic=True, inhomogeneous=False`` builds the ``DynamicDWConv`` (the official HEAD overwrites it with a
  static conv, issue #1; the initial commit, the released checkpoints and the downstream backbones are dynamic);
  ``inhomo_heads`` is optional (HEAD cannot build ``dwnet`` without it, #2);
* the inhomogeneous conv is plain PyTorch (:mod:`dwnet.models.ops`), not a cupy kernel: CPU and GPU, any float
  dtype (so AMP works);
* any input size works: the stream is a ``(B, C, H, W)`` map; as in the official detection / segmentation
  backbone, each block zero-pads its map at the bottom / right to a multiple of ``window_size`` before the
  depth-wise block and crops back after it, and PatchMerging pads odd sizes (both no-ops at 224);
  ``img_size`` is the size the model is meant for (``ape``, :meth:`DWNet.flops`, the pretrained cfg);
* timm's model API (:class:`common.models.ClassifierModel`): ``forward_features`` returns the final-norm map
  ``(B, 8C, H/32, W/32)``, ``forward_head`` pools (mean over positions, as the official ``AdaptiveAvgPool1d``)
  and classifies; ``features_only`` gives the four stage maps (the input of each stage's PatchMerging, and the
  final-norm map); ``set_grad_checkpointing`` is the official ``use_checkpoint`` (each block recomputed).
  ``drop_rate`` is the official one (``pos_drop`` and the Mlp dropout); there is no dropout before the head.
* on CPU in float32 the stream runs channels_last from the patch embedding on and the static 7x7 depth-wise
  conv is a :class:`common.layers.conv.DepthwiseConv2d` (same keys): oneDNN's depth-wise kernels are several
  times faster in that layout, and the Mlp's ``(B, H, W, C)`` view of a channels_last map needs no copy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from common.layers.conv import DepthwiseConv2d, cpu_channels_last
from common.layers.drop import drop_path_or_identity
from common.layers.swin import Mlp, PatchEmbed, PatchMerging
from common.models import ClassifierModel
from common.registry import Registry, UnknownModelError
from common.timm_compat import register_registry

from .ops import dynamic_dwconv, idynamic_dwconv

__all__ = ["REGISTRY", "DWNet", "BasicLayer", "SpatialBlock", "DWBlock", "DynamicDWConv", "IDynamicDWConv",
           "IMAGENET_MEAN", "IMAGENET_STD", "create_model", "list_models", "variants", "get_variant"]

REGISTRY = Registry("dwnet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DynamicDWConv(nn.Module):
    """D-DWNet's spatial op: a depth-wise ``k x k`` kernel per (image, channel) predicted from the global mean,
    ``conv2(relu(bn(conv1(avgpool(x)))))`` (reduction 4), plus a static per-channel ``bias``.
    Keys: ``bias``, ``conv1.weight``, ``bn.*``, ``conv2.{weight,bias}`` (own parameter first, as officially)."""

    def __init__(self, dim, kernel_size, bias=True, stride=1, padding=1, groups=1, reduction=4):
        super().__init__()
        if stride != 1 or groups != dim:
            raise ValueError(f"DynamicDWConv: only stride 1 and groups == dim (depth-wise) are supported, got "
                             f"stride={stride}, groups={groups}, dim={dim}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.conv1 = nn.Conv2d(dim, dim // reduction, 1, bias=False)
        self.bn = nn.BatchNorm2d(dim // reduction)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(dim // reduction, dim * kernel_size * kernel_size, 1)
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        b = x.shape[0]
        weight = self.conv2(self.relu(self.bn(self.conv1(self.pool(x)))))  # (B, C*k*k, 1, 1), channel-major
        weight = weight.view(b, self.dim, self.kernel_size, self.kernel_size)
        return dynamic_dwconv(x, weight, self.bias, padding=self.padding)


class IDynamicDWConv(nn.Module):
    """I-D-DWNet's spatial op: a ``k x k`` kernel per (image, position, group of ``group_channels`` channels),
    ``conv2(conv1(x))`` with ``conv1 = [Conv2d(C, C/4, 1), BN, ReLU]``, ``conv2 = [Conv2d(C/4, G*k*k, 1)]``,
    G = C / group_channels; no bias. (The official config calls ``group_channels`` INHOMO_HEADS.)"""

    def __init__(self, channels, kernel_size, group_channels):
        super().__init__()
        if not group_channels or channels % group_channels:
            raise ValueError(f"IDynamicDWConv: {channels} channels are not divisible into groups of "
                             f"{group_channels} (INHOMO_HEADS)")
        self.kernel_size = kernel_size
        self.channels = channels
        self.group_channels = group_channels
        self.groups = channels // group_channels
        reduction_ratio = 4
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels // reduction_ratio, 1),
                                   nn.BatchNorm2d(channels // reduction_ratio), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(channels // reduction_ratio, kernel_size ** 2 * self.groups, 1))

    def forward(self, x):
        weight = self.conv2(self.conv1(x))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size, self.kernel_size, h, w)
        return idynamic_dwconv(x, weight)


class DWBlock(nn.Module):
    """``bn2(conv2(relu(bn(conv(relu(bn0(conv0(x))))))))`` on ``(B, C, H, W)``: 1x1 conv, the spatial op
    (``conv``: static depth-wise Conv2d, :class:`DynamicDWConv` or :class:`IDynamicDWConv`), 1x1 conv."""

    def __init__(self, dim, window_size, dynamic=False, inhomogeneous=False, heads=None):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.dynamic = dynamic
        self.inhomogeneous = inhomogeneous
        self.heads = heads
        self.conv0 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(dim)
        if dynamic and not inhomogeneous:
            self.conv = DynamicDWConv(dim, kernel_size=window_size, stride=1, padding=window_size // 2, groups=dim)
        elif dynamic and inhomogeneous:
            self.conv = IDynamicDWConv(dim, window_size, heads)
        else:
            self.conv = DepthwiseConv2d(dim, window_size, stride=1, padding=window_size // 2)
        self.bn = nn.BatchNorm2d(dim)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(dim, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        x = self.relu(self.bn0(self.conv0(x)))
        x = self.relu(self.bn(self.conv(x)))
        return self.bn2(self.conv2(x))

    def extra_repr(self):
        return f"dim={self.dim}, window_size={self.window_size}"

    def flops(self, n):
        """The official count for ``n`` positions (multiply-accumulates)."""
        d, k2 = self.dim, self.window_size * self.window_size
        flops = n * d * d
        if self.dynamic and not self.inhomogeneous:
            flops += n * d + d * d / 4 + d / 4 * d * k2
        elif self.dynamic and self.inhomogeneous:
            flops += n * d * d / 4 + n * d / 4 * d / self.heads * k2
        flops += n * d * k2
        flops += n * d * d
        flops += 8 * d * n
        return flops


class SpatialBlock(nn.Module):
    """``x = x + drop_path(attn2conv(x)); x = x + drop_path(mlp(bn(x)))`` on ``(B, C, H, W)``; the Mlp runs
    over the channels of each position. The DWBlock sees the map zero-padded at the bottom / right to a
    multiple of ``window_size`` (the official backbones' rule; nothing to pad at 224)."""

    def __init__(self, dim, input_resolution=None, window_size=7, mlp_ratio=4.0, drop=0.0, drop_path=0.0,
                 dynamic=False, inhomogeneous=False, inhomo_head=None, act_layer=nn.GELU):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.dynamic = dynamic
        self.attn2conv = DWBlock(dim, window_size, dynamic, inhomogeneous, inhomo_head)
        self.drop_path = drop_path_or_identity(drop_path)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.bn = nn.BatchNorm2d(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        ws = self.window_size
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        y = F.pad(x, (0, pad_r, 0, pad_b)) if pad_r or pad_b else x
        y = self.attn2conv(y)
        if pad_r or pad_b:
            y = y[:, :, :h, :w]
        x = x + self.drop_path(y)
        y = self.mlp(self.bn(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x + self.drop_path(y)

    def extra_repr(self):
        return f"dim={self.dim}, input_resolution={self.input_resolution}, window_size={self.window_size}, " \
               f"mlp_ratio={self.mlp_ratio}"

    def flops(self, h, w):
        return 2 * self.dim * h * w + self.attn2conv.flops(h * w) + 2 * h * w * self.dim * self.dim * self.mlp_ratio


class BasicLayer(nn.Module):
    """One stage: ``blocks`` (each recomputed in backward when ``use_checkpoint``), then ``downsample``
    (PatchMerging, or None in the last stage). ``(B, C, H, W) -> (B, 2C, H/2, W/2)``."""

    def __init__(self, dim, input_resolution, depth, window_size, mlp_ratio=4.0, drop=0.0, drop_path=0.0,
                 norm_layer=nn.LayerNorm, downsample=None, use_checkpoint=False, dynamic=False,
                 inhomogeneous=False, inhomo_head=None):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList([
            SpatialBlock(dim=dim, input_resolution=input_resolution, window_size=window_size, mlp_ratio=mlp_ratio,
                         drop=drop, dynamic=dynamic, inhomogeneous=inhomogeneous, inhomo_head=inhomo_head,
                         drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path)
            for i in range(depth)])
        self.downsample = downsample(dim, norm_layer=norm_layer) if downsample is not None else None

    def forward_blocks(self, x):
        """The blocks only (the stage's output map before its PatchMerging)."""
        ckpt = self.use_checkpoint and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if ckpt else blk(x)
        return x

    def forward(self, x):
        x = self.forward_blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x

    def extra_repr(self):
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


class DWNet(ClassifierModel):
    """The official ``DWNet`` (arguments, defaults and keys), on :class:`common.models.ClassifierModel`.

    ``dynamic`` selects D-DWNet, ``dynamic`` + ``inhomogeneous`` I-D-DWNet with ``inhomo_heads[i]`` channels
    per kernel group in stage ``i``. ``global_pool`` is the contract's (timm's) pooling of the head."""

    head_name = "head"
    blocks_attr = "blocks"

    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2),
                 window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm,
                 ape=False, patch_norm=True, use_checkpoint=False, dynamic=False, inhomogeneous=False,
                 inhomo_heads=None, *, global_pool="avg"):
        super().__init__()
        depths = list(depths)
        self.num_layers = len(depths)
        if norm_layer is not nn.LayerNorm:
            raise ValueError(f"DWNet: norm_layer must be nn.LayerNorm (the official one), got {norm_layer!r}")
        if inhomogeneous and not dynamic:
            raise ValueError("DWNet: inhomogeneous=True needs dynamic=True (I-D-DWNet is a dynamic variant)")
        if inhomogeneous and (inhomo_heads is None or len(inhomo_heads) != self.num_layers):
            raise ValueError(f"DWNet: inhomogeneous=True needs inhomo_heads with one entry per stage "
                             f"({self.num_layers}), got {inhomo_heads!r}")
        self.img_size = tuple(img_size) if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.mlp_ratio = mlp_ratio
        self.window_size = window_size
        num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.patches_resolution = [s // patch_size for s in self.img_size]
        res = self.patches_resolution

        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                                      norm=patch_norm, flatten=False, norm_layer=norm_layer)
        if ape:  # a parameter of the model itself: its key comes first in the state_dict, as officially
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, res[0] * res[1], embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        layers = []
        for i in range(self.num_layers):
            layers.append(BasicLayer(
                dim=int(embed_dim * 2 ** i), input_resolution=(res[0] // 2 ** i, res[1] // 2 ** i),
                depth=depths[i], window_size=window_size, mlp_ratio=mlp_ratio, drop=drop_rate,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer=norm_layer,
                downsample=PatchMerging if i < self.num_layers - 1 else None, use_checkpoint=use_checkpoint,
                dynamic=dynamic, inhomogeneous=inhomogeneous,
                inhomo_head=inhomo_heads[i] if inhomogeneous else None))
        self.layers = nn.Sequential(*layers)
        self.norm = LayerNorm2d(num_features, eps=1e-5)  # nn.LayerNorm over the channels of each position
        self.stage_names = tuple(f"layers.{i}" for i in range(self.num_layers))
        self.feature_info = [] if ape else [
            dict(num_chs=int(embed_dim * 2 ** i), reduction=patch_size * 2 ** i,
                 module=f"layers.{i}.downsample" if i < self.num_layers - 1 else "norm",
                 hook_type="forward_pre" if i < self.num_layers - 1 else "forward")
            for i in range(self.num_layers)]
        self.init_head(num_features, num_classes, global_pool, 0.0)
        self.grad_checkpointing = bool(use_checkpoint)
        self.apply(_init_weights)

    # -- trunk ---------------------------------------------------------------------------------------
    def forward_features(self, x):
        x = cpu_channels_last(self.patch_embed(x))  # the layout the CPU kernels want (same numbers)
        if self.ape:
            h, w = x.shape[-2:]
            if [h, w] != self.patches_resolution:
                raise ValueError(f"DWNet(ape=True) was built for {self.img_size[0]}x{self.img_size[1]} inputs "
                                 f"({self.patches_resolution} patches), got a {h}x{w} patch grid")
            x = x + self.absolute_pos_embed.transpose(1, 2).reshape(1, -1, h, w)
        x = self.pos_drop(x)
        x = self.layers(x)
        return self.norm(x)

    # -- training helpers ----------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """The official ``use_checkpoint``: every block is recomputed in the backward pass."""
        self.grad_checkpointing = bool(enable)
        for layer in self.layers:
            layer.use_checkpoint = bool(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self):
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Swin's: stem = patch_embed (and ape); per stage, or per block with each PatchMerging and the final
        norm joining the block before them."""
        stem = r"^absolute_pos_embed|^patch_embed"
        if coarse:
            return dict(stem=stem, blocks=[(r"^layers\.(\d+)", None), (r"^norm", (99999,))])
        return dict(stem=stem, blocks=[(r"^layers\.(\d+)\.blocks\.(\d+)", None),
                                       (r"^layers\.(\d+)\.downsample", (99999,)), (r"^norm", (99999,))])

    def flops(self):
        """The official ``flops()`` at ``img_size`` (multiply-accumulates, the count ``main.py`` logs)."""
        h, w = self.patches_resolution
        pe = self.patch_embed
        flops = h * w * self.embed_dim * pe.in_chans * pe.patch_size * pe.patch_size
        if self.patch_norm:
            flops += h * w * self.embed_dim
        for i, layer in enumerate(self.layers):
            hi, wi = h // 2 ** i, w // 2 ** i
            for blk in layer.blocks:
                flops += blk.flops(hi, wi)
            if layer.downsample is not None:
                flops += hi * wi * layer.dim + (hi // 2) * (wi // 2) * 4 * layer.dim * 2 * layer.dim
        flops += self.num_features * h * w // (2 ** self.num_layers)
        flops += self.num_features * self.num_classes
        return flops


def _init_weights(m):
    """The official init: Linear trunc-normal(std .02) and bias 0, LayerNorm 1 / 0; convs and BN keep
    PyTorch's defaults."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


# --------------------------------------------------------------------------------------
# Constructor (the official class and its arguments) and the named variants
# --------------------------------------------------------------------------------------
@REGISTRY.register("dwnet", default_cfg=dict(input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                             classifier="head"))
def dwnet(img_size=224, patch_size=4, in_chans=3, num_classes=1000, embed_dim=96, depths=(2, 2, 6, 2), window_size=7,
          mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.1, norm_layer=nn.LayerNorm, ape=False, patch_norm=True,
          use_checkpoint=False, dynamic=False, inhomogeneous=False, inhomo_heads=None, *, global_pool="avg"):
    """``DWNet(...)`` with the official arguments (``build_model`` calls it for MODEL.TYPE dwnet, ddwnet and
    iddwnet)."""
    return DWNet(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                 embed_dim=embed_dim, depths=depths, window_size=window_size, mlp_ratio=mlp_ratio, drop_rate=drop_rate,
                 drop_path_rate=drop_path_rate, norm_layer=norm_layer, ape=ape, patch_norm=patch_norm,
                 use_checkpoint=use_checkpoint, dynamic=dynamic, inhomogeneous=inhomogeneous,
                 inhomo_heads=inhomo_heads, global_pool=global_pool)


def _variant_cfg(**kw):
    """Complete timm pretrained_cfg of an ImageNet-1k variant (the official eval transform: resize 256 bicubic,
    center crop 224)."""
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                crop_mode="center", interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                first_conv="patch_embed.proj", classifier="head", license="mit",
                paper_name="On the Connection between Local Attention and Dynamic Depth-wise Convolution (ICLR 2022)",
                paper_ids="arXiv:2106.04263", origin_url="https://github.com/Atten4Vis/DemystifyLocalViT", **kw)


_RELEASE = "https://github.com/Atten4Vis/DemystifyLocalViT/releases/download/prerelease/"
_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), drop_path_rate=0.2)
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), drop_path_rate=0.5)
for _name, _kw, _ckpt in (
    ("dwnet_tiny", dict(_TINY), "dwnet_tiny_224.pth"),
    ("dynamic_dwnet_tiny", dict(_TINY, dynamic=True), "dynamic_dwnet_tiny_224.pth"),
    ("i_dynamic_dwnet_tiny", dict(_TINY, dynamic=True, inhomogeneous=True, inhomo_heads=(3, 6, 12, 24)), None),
    ("dwnet_base", dict(_BASE), "dwnet_base_224.pth"),
    ("dynamic_dwnet_base", dict(_BASE, dynamic=True), "dynamic_dwnet_base_224.pth"),
    ("i_dynamic_dwnet_base", dict(_BASE, dynamic=True, inhomogeneous=True, inhomo_heads=(4, 8, 16, 32)), None),
):
    # the released checkpoints are not downloaded (no url): their address is recorded in the cfg's notes
    _cfg = _variant_cfg(notes=(f"official checkpoint: {_RELEASE}{_ckpt}",) if _ckpt else
                        ("no official checkpoint released",))
    REGISTRY.add_variant(_name, "dwnet", _kw, pretrained_cfg=_cfg, paper=True)


def create_model(name, **kwargs):
    """``create_model('dwnet_tiny')`` (a named variant; ``kwargs`` override its arguments),
    ``create_model('dwnet', **official_kwargs)``, or ``create_model('dwnet_tiny_patch4_window7_224')`` (a
    config of ``dwnet/configs`` by its file name, built by ``build_model`` as officially);
    ``features_only=True`` / ``out_indices`` as in timm."""
    if name not in REGISTRY:
        from ..config import config_names, load_config
        from .build import build_model

        if name in config_names():
            return build_model(load_config(name), **kwargs)
        raise UnknownModelError(f"unknown dwnet model {name!r}; choose one of: {', '.join(REGISTRY.list_models())} "
                                f"(named variants: {', '.join(REGISTRY.list_variants())}; configs: "
                                f"{', '.join(config_names())})")
    return REGISTRY.create(name, **kwargs)


list_models = REGISTRY.list_models  # the constructor names (shell-pattern filter)
variants = REGISTRY.variants  # the named variants, in declaration order
get_variant = REGISTRY.get_variant


register_registry(REGISTRY)
