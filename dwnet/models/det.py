"""The detection / segmentation backbone of DWNet: ``DWNet`` of the official mmdetection and mmsegmentation forks
(``downstreams/{detection,segmentation}/mm{det,seg}/models/backbones/dwnet.py``), in plain PyTorch, on the
classification model's blocks (:mod:`dwnet.models.dwnet`).

``DWNet(embed_dim=96, depths=[2, 2, 6, 2], window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2,
ape=False, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False, dynamic=False)`` (tiny; base:
``embed_dim=128, depths=[2, 2, 18, 2]``; ``dynamic=True`` for D-DWNet) returns, for each stage in
``out_indices``, its map before the PatchMerging normalised by ``norm{i}`` (a BatchNorm2d; SyncBN in the
official configs: ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts every BatchNorm of the backbone
the same way). Any input size works as officially: the input is zero-padded at the bottom / right to a
multiple of the patch size, each block pads its map to a multiple of ``window_size`` and crops back, and
PatchMerging pads odd sizes.

Keys: the classification model's without ``norm`` and ``head``, plus ``norm0 .. norm3`` (and, with ``ape``,
``absolute_pos_embed`` as a ``(1, C, H, W)`` map, bicubic-resized to the input's patch grid). A classification
checkpoint therefore loads with ``norm.*`` / ``head.*`` unused and ``norm0-3`` missing (they keep BatchNorm's
defaults, as officially); the report says so. ``frozen_stages`` as officially (Swin's: ``0`` the patch
embedding, ``1`` also ``absolute_pos_embed``, ``k >= 2`` also the first ``k - 1`` stages); ``norm_eval``
(not an official argument; default False) puts every BatchNorm in eval mode in training. Init: the official
``init_weights`` (trunc-normal Linear, LayerNorm 1 / 0), then the checkpoint when ``pretrained`` is given.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from common.backbone import DetectionBackbone

from .dwnet import DWNet as _ClsDWNet
from .dwnet import _init_weights

__all__ = ["DWNet"]


class DWNet(DetectionBackbone):
    """Official arguments; ``norm_eval``, ``pretrained`` and ``init_cfg`` as in mmdet's backbones."""

    init_before_pretrained = True

    def __init__(self, pretrain_img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2, norm_layer=nn.LayerNorm, ape=False,
                 patch_norm=True, out_indices=(0, 1, 2, 3), frozen_stages=-1, use_checkpoint=False, dynamic=False,
                 norm_eval=False, pretrained=None, init_cfg=None):
        super().__init__()
        depths = list(depths)
        self.num_layers = len(depths)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i < 0 or i >= self.num_layers for i in out_indices):
            raise ValueError(f"DWNet: out_indices must be stage numbers in 0..{self.num_layers - 1}, got "
                             f"{out_indices}")
        self.setup_backbone(frozen_stages, norm_eval, pretrained, init_cfg)
        self.pretrain_img_size = pretrain_img_size
        self.embed_dim, self.ape, self.patch_norm, self.out_indices = embed_dim, ape, patch_norm, out_indices
        trunk = _ClsDWNet(img_size=pretrain_img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0,
                          embed_dim=embed_dim, depths=depths, window_size=window_size, mlp_ratio=mlp_ratio,
                          drop_rate=drop_rate, drop_path_rate=drop_path_rate, norm_layer=norm_layer, ape=False,
                          patch_norm=patch_norm, use_checkpoint=use_checkpoint, dynamic=dynamic)
        self.patch_embed = trunk.patch_embed
        if ape:
            size = pretrain_img_size if isinstance(pretrain_img_size, (tuple, list)) else (pretrain_img_size,) * 2
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, size[0] // patch_size,
                                                               size[1] // patch_size))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = trunk.pos_drop
        self.layers = nn.ModuleList(trunk.layers)
        self.num_features = [int(embed_dim * 2 ** i) for i in range(self.num_layers)]
        for i in out_indices:
            self.add_module(f"norm{i}", nn.BatchNorm2d(self.num_features[i]))
        self.out_channels = [self.num_features[i] for i in out_indices]
        self._freeze_stages()

    def forward(self, x):
        x = self.patch_embed(x)
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=x.shape[-2:], mode="bicubic")
        x = self.pos_drop(x)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer.forward_blocks(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
            if layer.downsample is not None:
                x = layer.downsample(x)
        return tuple(outs)

    def set_grad_checkpointing(self, enable=True):
        """The official ``use_checkpoint``: every block is recomputed in the backward pass."""
        for layer in self.layers:
            layer.use_checkpoint = bool(enable)

    # -- DetectionBackbone --------------------------------------------------------------------------
    def frozen_modules(self):
        mods = [self.patch_embed] if self.frozen_stages >= 0 else []
        if self.frozen_stages >= 1 and self.ape:
            mods.append(self.absolute_pos_embed)
        if self.frozen_stages >= 2:
            mods.append(self.pos_drop)
            mods += list(self.layers[:self.frozen_stages - 1])
        return mods

    def official_init_(self):
        self.apply(_init_weights)

    def adapt_state_dict(self, state_dict):
        """The official loader's reshape of a classification ``absolute_pos_embed`` ``(1, H*W, C)`` into the
        backbone's ``(1, C, H, W)`` (left as it is when the sizes do not agree: reported as mis-shaped)."""
        pos = state_dict.get("absolute_pos_embed")
        if self.ape and pos is not None and pos.dim() == 3:
            n, length, c = pos.shape
            _, c2, h, w = self.absolute_pos_embed.shape
            if c == c2 and length == h * w:
                state_dict["absolute_pos_embed"] = pos.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return state_dict

    def explain(self, kind, key, checkpoint_shape=None, model_shape=None):
        if key.startswith("head."):
            return "the classifier: the detection backbone has none"
        if key.startswith("norm."):
            return ("the classification model's final LayerNorm: the detection backbone normalises each output "
                    "with its own BatchNorm norm0-3 instead")
        if kind == "missing" and key.split(".")[0] in {f"norm{i}" for i in range(self.num_layers)}:
            return ("the detection backbone's BatchNorm of each output, which a classification model does not "
                    "have: left at BatchNorm's defaults (weight 1, bias 0, running mean 0, var 1), as officially")
        return super().explain(kind, key, checkpoint_shape, model_shape)
