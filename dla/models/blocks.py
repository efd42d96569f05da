"""Residual blocks of the DLA code base (CIFAR and ImageNet), one small class per role.

All are post-activation ResNet blocks with the official attribute names (``conv1``, ``bn1``, ..., ``bn3``,
``downsample``, then ``se`` / ``eca`` / ``mrla`` + ``bn_mrla``), registered in the official order, so the
state_dict keys match the official checkpoints. The ImageNet bottleneck with ``groups=1`` and
``base_width=64`` is the CIFAR one.

================================  =======================================================================
block                             returns
================================  =======================================================================
:class:`BasicBlock`               ``relu(attn(bn2 conv2 relu bn1 conv1 x) + shortcut)``
:class:`Bottleneck`               ``relu(attn(bn3 ...) + shortcut)``; with ``return_shortcut=True`` also the
                                  shortcut (the DLA-L stages use it)
:class:`BranchBottleneck`         ``(bn3 ..., shortcut)`` without adding them (the DIA stage combines them)
:class:`MRLALightBottleneck`      ``y + DropPath(BN(LLA(y) + lambda_t * shortcut))`` with ``y`` the
                                  bottleneck output (CIFAR ``mrla_light``)
:class:`MRLABaseBottleneck`       ``(y + DropPath(ReLU(BN(MRLA-base(y, K, V)))), K', V')`` (``mrla_base``)
================================  =======================================================================

``attn`` is an optional channel attention after the last BN, built by ``attn_layer(channels)`` and stored
under ``attn_name`` (``'se'`` or ``'eca'``).
"""
import torch.nn as nn

from common.layers.drop import drop_path_or_identity
from common.layers.layer_attention import BaseLayerAttentionModule, LightLayerAttentionModule

__all__ = ["conv1x1", "conv3x3", "downsample", "BasicBlock", "Bottleneck", "BranchBottleneck",
           "MRLALightBottleneck", "MRLABaseBottleneck"]


def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def downsample(cin, cout, stride, norm_layer=nn.BatchNorm2d):
    """The projection shortcut ``Sequential(conv1x1(stride), BN)`` (keys ``downsample.0`` / ``.1``)."""
    return nn.Sequential(conv1x1(cin, cout, stride), norm_layer(cout))


class _AttnMixin:
    def _add_attn(self, channels, attn_layer, attn_name):
        self.attn_name = attn_name if attn_layer is not None else None
        if attn_layer is not None:
            self.add_module(attn_name, attn_layer(channels))

    def _attn(self, out):
        return out if self.attn_name is None else getattr(self, self.attn_name)(out)


class BasicBlock(_AttnMixin, nn.Module):
    """Two 3x3 convolutions (CIFAR ``resnet`` / ``senet`` / ``ecanet`` with ``block_name='basicblock'``)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, attn_layer=None, attn_name="se"):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self._add_attn(planes, attn_layer, attn_name)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self._attn(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(_AttnMixin, nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 x4, width ``int(planes * base_width / 64) * groups``."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=nn.BatchNorm2d, attn_layer=None, attn_name="se", return_shortcut=False):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self._add_attn(planes * self.expansion, attn_layer, attn_name)
        self.return_shortcut = return_shortcut

    def branch(self, x):
        """The residual branch up to ``bn3`` (and the channel attention) and the shortcut."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self._attn(self.bn3(self.conv3(out)))
        return out, (x if self.downsample is None else self.downsample(x))

    def forward(self, x):
        out, shortcut = self.branch(x)
        out = self.relu(out + shortcut)
        return (out, shortcut) if self.return_shortcut else out


class BranchBottleneck(Bottleneck):
    """:class:`Bottleneck` returning ``(bn3 output, shortcut)`` un-added (official DIA ``Bottleneck``)."""

    def forward(self, x):
        return self.branch(x)


class MRLALightBottleneck(Bottleneck):
    """Bottleneck + MRLA-light branch: ``y + DropPath(BN(mrla(y, shortcut)))`` (no ReLU after the BN).
    Keys ``mrla.lambda_t``, ``mrla.mrla.{Wq,Wk,Wv}``, ``bn_mrla.*`` after the bottleneck's."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, drop_path=0.0, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, **kwargs)
        channels = planes * self.expansion
        self.mrla = LightLayerAttentionModule(channels, attn_name="mrla")
        self.bn_mrla = nn.BatchNorm2d(channels)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x):
        out, shortcut = self.branch(x)
        out = self.relu(out + shortcut)
        return out + self.drop_path(self.bn_mrla(self.mrla(out, shortcut)))


class MRLABaseBottleneck(Bottleneck):
    """Bottleneck + MRLA-base branch; ``forward(x, K, V) -> (y + DropPath(ReLU(BN(o))), K', V')``.
    Keys ``mrla.mrla.{Wq,Wk,Wv}``, ``bn_mrla.*``."""

    def __init__(self, inplanes, planes, stride=1, downsample=None, drop_path=0.0, **kwargs):
        super().__init__(inplanes, planes, stride, downsample, **kwargs)
        channels = planes * self.expansion
        self.mrla = BaseLayerAttentionModule(channels, attn_name="mrla")
        self.bn_mrla = nn.BatchNorm2d(channels)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x, prev_k=None, prev_v=None):
        out, shortcut = self.branch(x)
        out = self.relu(out + shortcut)
        attn, keys, values = self.mrla(out, prev_k, prev_v)
        return out + self.drop_path(self.relu(self.bn_mrla(attn))), keys, values
