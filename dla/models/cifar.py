"""The CIFAR models of the DLA code base (official ``cifar.py -a`` names and constructor arguments).

``dla_l`` / ``dla_b`` (dynamic layer attention, light / base), the static layer-attention baselines
``mrla_light`` / ``mrla_base`` (MRLA), and the baselines ``resnet``, ``senet``, ``ecanet``, ``dia_resnet``.
Every constructor is ``arch(num_classes, depth, block_name, drop_path)``: a 3-stage post-activation ResNet
(16-channel 3x3 stem, stages of ``n`` blocks with 16/32/64 planes, strides 1/2/2, global average pool, ``fc``),
``n = (depth - 2) // 9`` for bottlenecks (stage widths 64/128/256) and ``(depth - 2) // 6`` for basic blocks.

Layer attention needs 32-channel heads, so ``dla_*``, ``mrla_*`` and ``dia_resnet`` take only
``block_name='bottleneck'`` (their default here; officially the basic-block variants cannot be built);
``resnet`` / ``senet`` / ``ecanet`` take both, defaulting to ``'BasicBlock'`` as officially. ``drop_path`` is
the stochastic-depth rate of every layer-attention branch (no depth ramp, LA branch only); the baselines
accept it and, as officially, do not use it.

Differences from the official code that change no number: the head is a global average pool (officially
``AvgPool2d(8)``, the same at 32x32, the only size the official head accepts); zero recurrent states follow
the input's dtype and device; ``dla_l`` / ``dla_b`` take ``fix_batch_context`` (default ``False`` = the
official batch-0 context, see :class:`common.layers.layer_attention.DLALightStage`).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import common.models
from common.layers.attention import ECAModule, SEModule
from common.layers.dia import DIALSTMCell
from common.layers.layer_attention import (BaseLayerAttentionBranch, DLABaseStage, DLALightStage,
                                           LightLayerAttentionBranch, gap)
from common.models import ClassifierModel

from ._registry import REGISTRY, cifar_cfg
from .blocks import (BasicBlock, Bottleneck, BranchBottleneck, MRLABaseBottleneck, MRLALightBottleneck, conv3x3,
                     downsample)

__all__ = ["CifarResNet", "CifarLayerAttentionNet", "DIAStage", "MRLABaseStage", "dla_b", "dla_l", "mrla_base",
           "mrla_light", "resnet", "senet", "ecanet", "dia_resnet", "CIFAR_VARIANTS"]

_BOTTLENECK_ONLY = ("dla_b", "dla_l", "mrla_base", "mrla_light", "dia_resnet")


def _num_blocks(arch, depth, block_name):
    """``(bottleneck?, n)`` from the official depth rule, with one clear error for what cannot be built."""
    name = str(block_name).lower()
    if name == "bottleneck":
        if depth < 11 or (depth - 2) % 9:
            raise ValueError(f"{arch}: with block_name='bottleneck' the depth must be 9n+2 (20, 29, 47, 56, 110, "
                             f"164, ...), got {depth}")
        return True, (depth - 2) // 9
    if name == "basicblock":
        if arch in _BOTTLENECK_ONLY:
            raise ValueError(f"{arch}: block_name='basicblock' is not available (layer attention needs the "
                             f"bottleneck's 64/128/256 channels); use block_name='bottleneck'")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"{arch}: with block_name='basicblock' the depth must be 6n+2 (20, 32, 44, 56, 110, "
                             f"...), got {depth}")
        return False, (depth - 2) // 6
    raise ValueError(f"{arch}: block_name must be 'basicblock' or 'bottleneck', got {block_name!r}")


class DIAStage(nn.Module):
    """A DIA stage (official ``Attention`` of ``dia_resnet.py``): blocks (``ModuleList.*``) return ``(branch,
    shortcut)``; one :class:`common.layers.dia.DIALSTMCell` (``lstm``, reduction 4) shared by the stage turns
    ``GAP(branch)`` into a channel mask: ``x = relu(branch * h_t + shortcut)``; state zero at the stage start."""

    def __init__(self, blocks, channels):
        super().__init__()
        self.ModuleList = nn.ModuleList(blocks)  # official attribute name (state_dict keys)
        self.lstm = DIALSTMCell(channels, reduction=4)

    def forward(self, x):
        state = None
        for block in self.ModuleList:
            out, shortcut = block(x)
            a = gap(out)
            state = self.lstm(a, self.lstm.init_state(a) if state is None else state)
            x = F.relu(out * state[0][:, :, None, None] + shortcut)
        return x


class MRLABaseStage(nn.ModuleList):
    """A stage of :class:`MRLABaseBottleneck` (keys ``<stage>.<i>.*``) threading the MRLA-base keys and values
    from block to block; the first block starts them afresh (official ``init_cell=True``)."""

    def forward(self, x):
        keys = values = None
        for block in self:
            x, keys, values = block(x, keys, values)
        return x


class _CifarNet(ClassifierModel):
    """Stem, three stages, global average pool and ``fc`` (official init: every Conv2d ~ N(0, sqrt(2 / (k*k*
    out_channels))), BatchNorm 1 / 0; Linear, Conv1d and ``lambda_t`` as constructed). The classifier contract
    of :mod:`common.models` (``forward_features`` / ``forward_head`` / ``reset_classifier`` / ``feature_info``);
    its keywords ``in_chans``, ``global_pool``, ``drop_rate`` default to the official model."""

    def __init__(self, arch, depth, num_classes, block_name, drop_path, *, fix_batch_context=False, in_chans=3,
                 global_pool="avg", drop_rate=0.0):
        super().__init__()
        self.arch = arch
        self.fix_batch_context = bool(fix_batch_context)
        bottleneck, n = _num_blocks(arch, depth, block_name)
        self.expansion = 4 if bottleneck else 1
        self.depth, self.blocks_per_stage = depth, n
        self.drop_path_rate = float(drop_path)
        self.inplanes = 16
        self.conv1 = conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self._build_stages(bottleneck, n)
        widths = [p * self.expansion for p in (16, 32, 64)]
        self.feature_info = [dict(num_chs=c, reduction=2 ** i, module=m)
                             for i, (c, m) in enumerate(zip(widths, self.stage_names))]
        self.init_head(widths[-1], num_classes, global_pool, drop_rate)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    def _downsample(self, planes, stride):
        out = planes * self.expansion
        return downsample(self.inplanes, out, stride) if stride != 1 or self.inplanes != out else None


class CifarResNet(_CifarNet):
    """``layer1..3`` stages: ``resnet``, ``senet`` (SE after bn3, r = 16), ``ecanet`` (adaptive-k ECA after
    bn3), ``mrla_light`` (MRLA-light inside each block) and ``dia_resnet`` (one DIA cell per stage)."""

    stage_names = ("layer1", "layer2", "layer3")

    def _build_stages(self, bottleneck, n):
        if self.arch == "dia_resnet":
            self.blocks_attr = "ModuleList"
        for i, planes in enumerate((16, 32, 64)):
            setattr(self, f"layer{i + 1}", self._stage(bottleneck, planes, n, 1 if i == 0 else 2))

    def _stage(self, bottleneck, planes, n, stride):
        arch, dp = self.arch, self.drop_path_rate
        block = Bottleneck if bottleneck else BasicBlock
        kw = {}
        if arch == "senet":
            kw = dict(attn_layer=lambda c: SEModule(c, reduction=16), attn_name="se")
        elif arch == "ecanet":
            kw = dict(attn_layer=lambda c: ECAModule(c), attn_name="eca")
        elif arch == "mrla_light":
            block, kw = MRLALightBottleneck, dict(drop_path=dp)
        elif arch == "dia_resnet":
            block = BranchBottleneck
        blocks = []
        for i in range(n):
            ds = self._downsample(planes, stride) if i == 0 else None
            blocks.append(block(self.inplanes, planes, stride if i == 0 else 1, ds, **kw))
            self.inplanes = planes * block.expansion
        return DIAStage(blocks, self.inplanes) if arch == "dia_resnet" else nn.Sequential(*blocks)


class CifarLayerAttentionNet(_CifarNet):
    """``stages.{0,1,2}``: ``dla_l`` (:class:`DLALightStage`, DW conv ``excite``), ``dla_b``
    (:class:`DLABaseStage`) with a DSU of reduction 4 per stage, and ``mrla_base`` (:class:`MRLABaseStage`)."""

    stage_names = ("stages.0", "stages.1", "stages.2")

    def _build_stages(self, bottleneck, n):
        if self.arch != "mrla_base":
            self.blocks_attr = "layers"  # the DLA stages keep their blocks in ``layers``
        self.stages = nn.Sequential(*[self._stage(p, n, 1 if i == 0 else 2) for i, p in enumerate((16, 32, 64))])

    def _stage(self, planes, n, stride):
        arch, dp, channels = self.arch, self.drop_path_rate, planes * Bottleneck.expansion
        if arch == "mrla_base":
            block, kw = MRLABaseBottleneck, dict(drop_path=dp)
        else:
            block, kw = Bottleneck, dict(return_shortcut=arch == "dla_l")
        blocks = []
        for i in range(n):
            ds = self._downsample(planes, stride) if i == 0 else None
            blocks.append(block(self.inplanes, planes, stride if i == 0 else 1, ds, **kw))
            self.inplanes = channels
        if arch == "mrla_base":
            return MRLABaseStage(blocks)
        if arch == "dla_l":
            branches = nn.Sequential(*[LightLayerAttentionBranch(channels, dp) for _ in range(n)])
            return DLALightStage(nn.Sequential(*blocks), branches, channels, reduction=4, dw_name="excite",
                                 fix_batch_context=self.fix_batch_context)
        branches = nn.Sequential(*[BaseLayerAttentionBranch(channels, dp) for _ in range(n)])
        return DLABaseStage(nn.ModuleList(blocks), branches, channels, reduction=4,
                            fix_batch_context=self.fix_batch_context)

    def forward_features(self, x):
        """Stem and ``stages`` (each stage under ``torch.utils.checkpoint`` when grad checkpointing is on)."""
        x = self.relu(self.bn1(self.conv1(x)))
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for stage in self.stages:
            x = common.models.checkpoint(stage, x, use_reentrant=False) if ckpt else stage(x)
        return x

    def group_matcher(self, coarse: bool = False):
        """Stem, then one group per stage (``coarse``) or per block (block ``i`` with its layer-attention
        branch ``attention.i``; the stage's DSU and DW conv after its last block), then the head."""
        if coarse:
            return dict(stem=r"^(?:conv1|bn1)\.", blocks=[(r"^stages\.(\d+)\.", None)])
        inner = r"\.(\d+)\." if self.arch == "mrla_base" else r"\.(?:layers|attention)\.(\d+)\."
        return dict(stem=r"^(?:conv1|bn1)\.", blocks=[(r"^stages\.(\d+)" + inner, None),
                                                      (r"^stages\.(\d+)\.", (99999,))])


# --------------------------------------------------------------------------------------------------------
# Constructors: official names and arguments (then keyword-only extras)
# --------------------------------------------------------------------------------------------------------
_CFG = cifar_cfg()


@REGISTRY.register(default_cfg=_CFG)
def dla_l(num_classes=1000, depth=110, block_name="bottleneck", drop_path=0.0, *, fix_batch_context=False,
          **contract):
    """DLA-L (dynamic layer attention, light). The README model: ``dla_l(100, 110, 'bottleneck', 0.2)``.
    ``contract``: ``in_chans``, ``global_pool``, ``drop_rate`` (:mod:`common.models`)."""
    return CifarLayerAttentionNet("dla_l", depth, num_classes, block_name, drop_path,
                                  fix_batch_context=fix_batch_context, **contract)


@REGISTRY.register(default_cfg=_CFG)
def dla_b(num_classes=1000, depth=110, block_name="bottleneck", drop_path=0.0, *, fix_batch_context=False,
          **contract):
    """DLA-B (dynamic layer attention, base). The README model: ``dla_b(100, 110, 'bottleneck', 0.2)``."""
    return CifarLayerAttentionNet("dla_b", depth, num_classes, block_name, drop_path,
                                  fix_batch_context=fix_batch_context, **contract)


@REGISTRY.register(default_cfg=_CFG)
def mrla_base(num_classes=1000, depth=110, block_name="bottleneck", drop_path=0.0, **contract):
    """Static layer attention, base (MRLA-base inside every bottleneck)."""
    return CifarLayerAttentionNet("mrla_base", depth, num_classes, block_name, drop_path, **contract)


@REGISTRY.register(default_cfg=_CFG)
def mrla_light(num_classes=1000, depth=110, block_name="bottleneck", drop_path=0.0, **contract):
    """Static layer attention, light (MRLA-light inside every bottleneck)."""
    return CifarResNet("mrla_light", depth, num_classes, block_name, drop_path, **contract)


@REGISTRY.register(default_cfg=_CFG)
def resnet(num_classes=1000, depth=110, block_name="BasicBlock", drop_path=0.0, **contract):
    """CIFAR ResNet (``drop_path`` accepted, unused, as officially)."""
    return CifarResNet("resnet", depth, num_classes, block_name, drop_path, **contract)


@REGISTRY.register(default_cfg=_CFG)
def senet(num_classes=1000, depth=110, block_name="BasicBlock", drop_path=0.0, **contract):
    """CIFAR SE-ResNet, SE (r = 16, no biases) after the last BN of every block (``drop_path`` unused)."""
    return CifarResNet("senet", depth, num_classes, block_name, drop_path, **contract)


@REGISTRY.register(default_cfg=_CFG)
def ecanet(num_classes=1000, depth=110, block_name="BasicBlock", drop_path=0.0, **contract):
    """CIFAR ECA-ResNet, adaptive-kernel ECA after the last BN of every block (``drop_path`` unused)."""
    return CifarResNet("ecanet", depth, num_classes, block_name, drop_path, **contract)


@REGISTRY.register(default_cfg=_CFG)
def dia_resnet(num_classes=1000, depth=110, block_name="bottleneck", drop_path=0.0, **contract):
    """DLA's CIFAR DIA-ResNet (keys ``layerK.ModuleList.i.*``, ``layerK.lstm.*``; ``drop_path`` unused)."""
    return CifarResNet("dia_resnet", depth, num_classes, block_name, drop_path, **contract)


# The named CIFAR variants (CIFAR-100, bottleneck, the README recipe's drop_path 0.2, which the official
# cifar.py passes to every arch whose name does not end in 'resnet'):
# (name, constructor, constructor kwargs without num_classes, pretrained_cfg, paper model?)
CIFAR_VARIANTS = tuple(
    (f"{arch}{depth}", arch, dict(depth=depth, block_name="bottleneck",
                                  **({} if arch.endswith("resnet") else dict(drop_path=0.2))),
     cifar_cfg(100), arch in ("dla_b", "dla_l") and depth == 110)
    for arch in ("dla_b", "dla_l", "mrla_base", "mrla_light", "resnet", "senet", "ecanet", "dia_resnet")
    for depth in (110, 164)
)
for _row in CIFAR_VARIANTS:
    REGISTRY.add_variant(_row[0], _row[1], _row[2], pretrained_cfg=_row[3], paper=_row[4])
del _row
