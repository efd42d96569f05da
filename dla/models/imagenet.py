"""The ImageNet models of the DLA code base (official names and constructor arguments).

``resnet50_dla_l`` / ``resnet101_dla_l``: ResNet-50/101 whose ``layer1..4`` are DLA-L stages
(:class:`common.layers.layer_attention.DLALightStage`: DSU of reduction 16, DW conv ``extict``, one
MRLA-light branch per block). Baselines: ``resnet50/101/152``, ``resnext50_32x4d`` / ``resnext101_32x4d``,
each with ``_se`` (SE r = 16 after bn3) and ``_eca`` (ECA with ``k_size=[5, 5, 5, 7]`` by stage), and
``senet_50`` (torchvision's ResNet-50 with a 1x1-conv SE after bn3: keys ``se.se.1`` / ``se.se.3``).

Constructor keywords (official ``ResNet``): ``num_classes=1000, SE=False, ECA=None, zero_init_last_bn=True,
groups=1, width_per_group=64, replace_stride_with_dilation=None, norm_layer=nn.BatchNorm2d, drop_rate=0.0``
(dropout before ``fc``) and, for the DLA models, ``drop_path=0.0`` (the LA branches) and
``fix_batch_context=False`` (see :class:`~common.layers.layer_attention.DLALightStage`). Every constructor
accepts ``drop_path`` (the official training script always passes it); the baselines do not use it.

Differences from the official code that change no number: nothing prints or downloads (officially
``senet_50`` is one module built at import time with torchvision's downloaded ResNet-50 weights, and ignores
its arguments; here each call builds a new model with the usual init); zero DSU states follow the input.
"""
import torch.nn as nn

from common.layers.attention import ECAModule, SEModule
from common.layers.layer_attention import DLALightStage, LightLayerAttentionBranch
from common.layers.init import init_resnet_
from common.models import ClassifierModel

from ._registry import REGISTRY, imagenet_cfg
from .blocks import Bottleneck, downsample

__all__ = [
    "ResNet", "ResNetDLAL", "resnet50_dla_l", "resnet101_dla_l", "resnet50", "resnet50_se", "resnet50_eca",
    "resnet101", "resnet101_se", "resnet101_eca", "resnet152", "resnet152_se", "resnet152_eca", "resnext50_32x4d",
    "resnext50_32x4d_se", "resnext50_32x4d_eca", "resnext101_32x4d", "resnext101_32x4d_se",
    "resnext101_32x4d_eca", "senet_50",
]


class ResNet(ClassifierModel):
    """ImageNet ResNet / ResNeXt with optional SE / ECA (official ``models/resnet.py``).

    ``se_layout``: ``'linear'`` (``se.fc.{0,2}``, the DLA ResNets) or ``'conv'`` (``se.se.{1,3}``, ``senet_50``).
    Init: Conv2d Kaiming-normal (fan_out, ReLU), norms 1 / 0, and with ``zero_init_last_bn`` every
    ``bn3.weight`` = 0. The classifier contract of :mod:`common.models`; its keywords ``in_chans`` and
    ``global_pool`` default to the official model (``drop_rate`` is the official argument).
    """

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, layers, num_classes=1000, SE=False, ECA=None, zero_init_last_bn=True, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, norm_layer=nn.BatchNorm2d, drop_rate=0.0,
                 drop_path=0.0, *, se_layout="linear", fix_batch_context=False, in_chans=3, global_pool="avg"):
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(f"replace_stride_with_dilation should be None or a 3-element list, got "
                             f"{replace_stride_with_dilation}")
        if ECA is None:
            ECA = [None] * 4
        elif len(ECA) != 4:
            raise ValueError(f"ECA (k_size) should be None or a 4-element list of kernel sizes, got {ECA}")
        self._norm_layer = norm_layer
        self.drop_path_rate = float(drop_path)
        self.fix_batch_context = bool(fix_batch_context)
        self.groups, self.base_width = groups, width_per_group
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.feature_info = []
        reduction = 4
        for i, planes in enumerate((64, 128, 256, 512)):
            stride, dilate = (1, False) if i == 0 else (2, replace_stride_with_dilation[i - 1])
            attn = self._attn_layer(SE, ECA[i], se_layout)
            setattr(self, f"layer{i + 1}", self._make_layer(planes, layers[i], attn, stride, dilate))
            reduction *= 1 if dilate else stride
            self.feature_info.append(dict(num_chs=planes * Bottleneck.expansion, reduction=reduction,
                                          module=f"layer{i + 1}"))
        self.init_head(512 * Bottleneck.expansion, num_classes, global_pool, drop_rate)
        init_resnet_(self, zero_init_last_bn, Bottleneck)

    @staticmethod
    def _attn_layer(se, eca_k, se_layout):
        if se:
            return dict(attn_layer=lambda c: SEModule(c, reduction=16, layout=se_layout), attn_name="se")
        if eca_k is not None:
            return dict(attn_layer=lambda c: ECAModule(k_size=int(eca_k)), attn_name="eca")
        return {}

    def _blocks(self, planes, n, attn, stride, dilate, **block_kw):
        norm_layer, previous_dilation = self._norm_layer, self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        out = planes * Bottleneck.expansion
        ds = downsample(self.inplanes, out, stride, norm_layer) if stride != 1 or self.inplanes != out else None
        kw = dict(groups=self.groups, base_width=self.base_width, norm_layer=norm_layer, **attn, **block_kw)
        blocks = [Bottleneck(self.inplanes, planes, stride, ds, dilation=previous_dilation, **kw)]
        self.inplanes = out
        blocks += [Bottleneck(out, planes, dilation=self.dilation, **kw) for _ in range(1, n)]
        return blocks

    def _make_layer(self, planes, n, attn, stride=1, dilate=False):
        return nn.Sequential(*self._blocks(planes, n, attn, stride, dilate))



class ResNetDLAL(ResNet):
    """ResNet whose stages are DLA-L stages (official ``models/resnet_dla_l.py``): keys
    ``layerK.layers.i.*``, ``layerK.attention.i.layer_attention.{lambda_t, mrla.W*}``,
    ``layerK.attention.i.bn_layer_attention.*``, ``layerK.lstm.*`` (DSU r = 16), ``layerK.extict.weight``."""

    blocks_attr = "layers"
    dsu_reduction = 16  #: the DSU bottleneck C // r (the detection backbone's is 20)
    dw_name = "extict"  #: the official name of the stage's depth-wise conv (the detection backbone's: excite)

    def _make_layer(self, planes, n, attn, stride=1, dilate=False):
        blocks = self._blocks(planes, n, attn, stride, dilate, return_shortcut=True)
        channels = planes * Bottleneck.expansion
        branches = [LightLayerAttentionBranch(channels, self.drop_path_rate, attn_name="mrla") for _ in range(n)]
        return DLALightStage(nn.Sequential(*blocks), nn.Sequential(*branches), channels, reduction=self.dsu_reduction,
                             dw_name=self.dw_name, fix_batch_context=self.fix_batch_context)


# --------------------------------------------------------------------------------------------------------
# Constructors (official names)
# --------------------------------------------------------------------------------------------------------
_CFG = imagenet_cfg()
_R50, _R101, _R152 = [3, 4, 6, 3], [3, 4, 23, 3], [3, 8, 36, 3]
_ECA_K = (5, 5, 5, 7)
_NEXT = dict(groups=32, width_per_group=4)


@REGISTRY.register(default_cfg=_CFG)
def resnet50_dla_l(**kwargs):
    """ResNet-50 + DLA-L (the official training script builds it with ``drop_rate=0.0, drop_path=0.2``)."""
    return ResNetDLAL(_R50, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet101_dla_l(**kwargs):
    """ResNet-101 + DLA-L."""
    return ResNetDLAL(_R101, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet50(**kwargs):
    """ResNet-50 (``drop_path`` accepted, unused)."""
    return ResNet(_R50, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet50_se(**kwargs):
    """SE-ResNet-50 (SE r = 16 after bn3)."""
    return ResNet(_R50, SE=True, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet50_eca(k_size=_ECA_K, **kwargs):
    """ECA-ResNet-50; ``k_size``: the ECA kernel of each stage."""
    return ResNet(_R50, ECA=list(k_size), **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet101(**kwargs):
    """ResNet-101 (``drop_path`` accepted, unused)."""
    return ResNet(_R101, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet101_se(**kwargs):
    """SE-ResNet-101 (SE r = 16 after bn3)."""
    return ResNet(_R101, SE=True, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet101_eca(k_size=_ECA_K, **kwargs):
    """ECA-ResNet-101; ``k_size``: the ECA kernel of each stage."""
    return ResNet(_R101, ECA=list(k_size), **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet152(**kwargs):
    """ResNet-152 (``drop_path`` accepted, unused)."""
    return ResNet(_R152, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet152_se(**kwargs):
    """SE-ResNet-152 (SE r = 16 after bn3)."""
    return ResNet(_R152, SE=True, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnet152_eca(k_size=_ECA_K, **kwargs):
    """ECA-ResNet-152; ``k_size``: the ECA kernel of each stage."""
    return ResNet(_R152, ECA=list(k_size), **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext50_32x4d(**kwargs):
    """ResNeXt-50 32x4d."""
    return ResNet(_R50, **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext50_32x4d_se(**kwargs):
    """SE-ResNeXt-50 32x4d."""
    return ResNet(_R50, SE=True, **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext50_32x4d_eca(k_size=_ECA_K, **kwargs):
    """ECA-ResNeXt-50 32x4d; ``k_size`` per stage."""
    return ResNet(_R50, ECA=list(k_size), **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext101_32x4d(**kwargs):
    """ResNeXt-101 32x4d."""
    return ResNet(_R101, **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext101_32x4d_se(**kwargs):
    """SE-ResNeXt-101 32x4d."""
    return ResNet(_R101, SE=True, **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def resnext101_32x4d_eca(k_size=_ECA_K, **kwargs):
    """ECA-ResNeXt-101 32x4d; ``k_size`` per stage."""
    return ResNet(_R101, ECA=list(k_size), **_NEXT, **kwargs)


@REGISTRY.register(default_cfg=_CFG)
def senet_50(**kwargs):
    """SE-ResNet-50 of the official ``senet.py``: torchvision's ResNet-50 (init without zeroed bn3) with a
    1x1-conv SE (r = 16, no biases) after bn3. Nothing is downloaded; keywords as :class:`ResNet`."""
    kwargs.setdefault("zero_init_last_bn", False)
    return ResNet(_R50, SE=True, se_layout="conv", **kwargs)
