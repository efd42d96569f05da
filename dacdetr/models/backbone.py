"""Backbones: ResNet with frozen BatchNorm, or Swin; joined with the position encoding.

The ResNet is torchvision's architecture built without downloading anything; ImageNet weights
are read from a local file only (``./initmodel/resnet50-19c8e357.pth`` as in the official
scripts, or ``--pretrained_backbone_path`` when it names an existing ResNet file). Swin weights
come from ``--pretrained_backbone_path`` when that file exists. A missing file is reported and
the backbone keeps its random initialisation.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, List

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from common.checkpoint import read_state_dict
from common.layers.norm import FrozenBatchNorm2d
from common.logging import log_load_report

from ..util.misc import NestedTensor
from .position_encoding import build_position_encoding
from .swin import build_swin, load_swin_pretrained

__all__ = [
    "FrozenBatchNorm2d",
    "BackboneBase",
    "Backbone",
    "TransformerBackbone",
    "Joiner",
    "build_backbone",
    "RESNET_INIT_PATH",
]

logger = logging.getLogger(__name__)

RESNET_INIT_PATH = "./initmodel/resnet50-19c8e357.pth"


def _masks_for(features: Dict[str, torch.Tensor], mask: torch.Tensor) -> Dict[str, NestedTensor]:
    """Nearest-neighbour down-sampling of the image padding mask to every feature map."""
    out = {}
    for name, x in features.items():
        m = F.interpolate(mask[None].float(), size=x.shape[-2:]).to(torch.bool)[0]
        out[name] = NestedTensor(x, m)
    return out


class BackboneBase(nn.Module):
    """Wraps a torchvision ResNet: freezes the stem + layer1 (or everything when the backbone is
    not trained) and returns layer2/3/4 (or layer4 alone) as NestedTensors."""

    def __init__(self, backbone: nn.Module, train_backbone: bool, return_interm_layers: bool):
        super().__init__()
        for name, param in backbone.named_parameters():
            trainable = train_backbone and any(s in name for s in ("layer2", "layer3", "layer4"))
            if not trainable:
                param.requires_grad_(False)
        if return_interm_layers:
            return_layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
            self.strides = [8, 16, 32]
            self.num_channels = [512, 1024, 2048]
        else:
            return_layers = {"layer4": "0"}
            self.strides = [32]
            self.num_channels = [2048]
        self.body = IntermediateLayerGetter(backbone, return_layers=return_layers)

    def forward(self, tensor_list: NestedTensor):
        if tensor_list.mask is None:
            raise ValueError("the backbone needs a padding mask")
        return _masks_for(self.body(tensor_list.tensors), tensor_list.mask)


class Backbone(BackboneBase):
    """torchvision ResNet with :class:`FrozenBatchNorm2d`, never downloaded."""

    def __init__(self, name: str, train_backbone: bool, return_interm_layers: bool, dilation: bool,
                 pretrained_path: str | None = RESNET_INIT_PATH):
        if name in ("resnet18", "resnet34"):
            raise ValueError("the channel numbers are those of bottleneck ResNets (resnet50/101/152)")
        net = getattr(torchvision.models, name)(
            weights=None, replace_stride_with_dilation=[False, False, dilation],
            norm_layer=FrozenBatchNorm2d)
        if pretrained_path and os.path.isfile(pretrained_path):
            result = net.load_state_dict(read_state_dict(pretrained_path), strict=False)
            log_load_report(result, pretrained_path, name, logger)  # on rank 0 (common.logging.setup_logging)
        elif pretrained_path:
            logger.warning("backbone weights %s not found: %s keeps its random initialisation "
                           "(put the ImageNet checkpoint there to train as the paper)", pretrained_path, name)
        super().__init__(net, train_backbone, return_interm_layers)
        if dilation:
            self.strides[-1] = self.strides[-1] // 2


class TransformerBackbone(nn.Module):
    """Swin backbone returning stages 1, 2, 3 (strides 8/16/32, channels 2C/4C/8C)."""

    def __init__(self, backbone: str, train_backbone: bool, return_interm_layers: bool, args):
        super().__init__()
        net, embed_dim = build_swin(backbone, drop_path_rate=getattr(args, "drop_path_rate", 0.2),
                                    out_indices=(1, 2, 3), use_checkpoint=True)
        path = getattr(args, "pretrained_backbone_path", None)
        if path and os.path.isfile(path):
            load_swin_pretrained(net, path)
        elif path:
            logger.warning("backbone weights %s not found: %s keeps its random initialisation", path, backbone)
        if not train_backbone:
            for param in net.parameters():
                param.requires_grad_(False)
        if return_interm_layers:
            self.strides = [8, 16, 32]
            self.num_channels = [embed_dim * 2, embed_dim * 4, embed_dim * 8]
        else:
            self.strides = [32]
            self.num_channels = [embed_dim * 8]
        self.body = net

    def forward(self, tensor_list: NestedTensor):
        if tensor_list.mask is None:
            raise ValueError("the backbone needs a padding mask")
        return _masks_for(self.body(tensor_list.tensors), tensor_list.mask)


class Joiner(nn.Sequential):
    """``backbone`` (index 0) + position encoding (index 1). Returns the feature NestedTensors in
    level order and their position encodings cast to the feature dtype."""

    def __init__(self, backbone, position_embedding):
        super().__init__(backbone, position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def forward(self, tensor_list: NestedTensor):
        feats = self[0](tensor_list)
        out: List[NestedTensor] = [feats[name] for name in sorted(feats)]
        pos = [self[1](x).to(x.tensors.dtype) for x in out]
        return out, pos


def _resnet_weights(args):
    """The official code always reads ./initmodel/resnet50-19c8e357.pth; an explicitly given
    existing ResNet file in --pretrained_backbone_path takes precedence."""
    path = getattr(args, "pretrained_backbone_path", None)
    if path and os.path.isfile(path) and "swin" not in os.path.basename(path).lower():
        return path
    return RESNET_INIT_PATH


def build_backbone(args):
    position_embedding = build_position_encoding(args)
    train_backbone = args.lr_backbone > 0
    return_interm_layers = getattr(args, "masks", False) or args.num_feature_levels > 1
    if "resnet" in args.backbone:
        body = Backbone(args.backbone, train_backbone, return_interm_layers,
                        getattr(args, "dilation", False), pretrained_path=_resnet_weights(args))
    else:
        body = TransformerBackbone(args.backbone, train_backbone, return_interm_layers, args)
    return Joiner(body, position_embedding)
