"""DIANet: Dense-and-Implicit Attention Network (Huang et al., AAAI 2020), CIFAR models.

One DIA unit per stage: a single LSTM-style cell whose parameters are shared by every
residual block of the stage. For block ``t`` of a stage with ``C`` output channels::

    out_t, sc_t = block_t(x_{t-1})              # residual branch (after its last BN), shortcut
    a_t         = mean_{H,W}(out_t)             # (B, C)
    gates       = F_ih(a_t) + F_hh(h_{t-1})     # (B, 4C), split as [i | f | g | o]
    c_t         = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t         = sigmoid(o) * sigmoid(c_t)     # sigmoid (not tanh) on the cell state
    x_t         = out_t * h_t + sc_t            # followed by ReLU in post-activation nets

with ``F(z) = W2 relu(W1 z + b1) + b2``, ``W1: C -> C // r``, ``W2: C // r -> 4C`` and
``r = 4``. The state starts at zero at the first block of every stage and is never carried
across stages.

The cell is :class:`common.layers.dia.DIALSTMCell`. Every network follows the classifier contract of
:mod:`common.models` (``forward_features`` / ``forward_head`` / ``reset_classifier`` / ``feature_info`` /
``features_only`` / grad checkpointing); its trunk activations are ``nn.ReLU`` modules, which have no
parameters. The named variants (``dia_resnet164``, ...) are declared once, at the end of this file, in
``REGISTRY``; the paper's four are registered in timm from there.

Module names, registration order and shapes follow the authors' code so that their
checkpoints load with ``strict=True`` (``<stage>.ModuleList.<i>.*`` then ``<stage>.lstm.*``).
Differences from that code, none of which changes the result of a configuration it can run:

* the LSTM width is derived from the stage width, so BasicBlock ResNet / PreResNet, any WRN
  widen factor and any ResNeXt widen factor work (the official code hard-codes 64/128/256, or
  128/256/512 for ResNeXt, and crashes otherwise);
* the head uses a global average pool instead of a fixed 8x8 pool, so inputs other than
  32x32 work (identical numbers at 32x32);
* the zero states follow the input's dtype and device (no ``.cuda()``);
* the LSTM cell has no dropout module: the official one only touches the (non-existent)
  second layer's input, so it never changes the output (it does consume RNG in train mode);
* ``fc_share__dense`` (the shared-FC ablation) gets its reduction ``c`` as a parameter; the
  official file never defines it and cannot be constructed;
* ``dia_resnext`` accepts ``dropRate`` but, as officially, does not use it.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.layers.dia import DIALSTMCell
from common.models import ClassifierModel
from common.registry import Registry
from common.timm_compat import register_registry

__all__ = [
    "DIALSTMCell", "DIAStage", "SharedFCStage",
    "ResBasicBlock", "ResBottleneck", "PreActBasicBlock", "PreActBottleneck",
    "WideBasicBlock", "ResNeXtBottleneck",
    "DIAResNet", "DIAPreResNet", "DIAWideResNet", "DIAResNeXt", "FCShareResNet",
    "dia_resnet", "dia_preresnet", "dia_wrn", "dia_resnext", "fc_share__dense",
    "CIFAR_MEAN", "CIFAR_STD", "REGISTRY", "create_model", "list_models", "variants", "get_variant",
]

REGISTRY = Registry("dianet")

# Normalisation used by the official training script for both CIFAR-10 and CIFAR-100.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------------------
# DIA unit: the cell is common.layers.dia.DIALSTMCell, shared by every paper that uses it
# --------------------------------------------------------------------------------------
class _AttentionStage(nn.Module):
    """A stage of residual blocks, each returning ``(branch, shortcut)``; the subclass
    turns the pooled branch into a channel mask and the stage adds the shortcut."""

    def __init__(self, blocks, post_relu):
        super().__init__()
        self.ModuleList = nn.ModuleList(blocks)  # official attribute name (state_dict keys)
        self.post_relu = post_relu

    def _combine(self, out, mask, shortcut):
        x = out * mask[:, :, None, None] + shortcut
        return F.relu(x) if self.post_relu else x


def _gap(x):
    """Global average pool (B, C, H, W) -> (B, C), as the official unit (an adaptive pool, which FLOP counters
    include: the paper models' 260.1M MACs count it)."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class DIAStage(_AttentionStage):
    """Residual blocks sharing one :class:`DIALSTMCell`; state reset at the stage start."""

    def __init__(self, blocks, channels, post_relu, reduction=4):
        super().__init__(blocks, post_relu)
        self.lstm = DIALSTMCell(channels, reduction)

    def forward(self, x):
        state = None
        for block in self.ModuleList:
            out, shortcut = block(x)
            a = _gap(out)
            if state is None:
                state = self.lstm.init_state(a)
            state = self.lstm(a, state)
            x = self._combine(out, state[0], shortcut)
        return x


class SharedFCStage(_AttentionStage):
    """Ablation: one SE-style MLP shared by all blocks of the stage, no recurrence.
    ``sharefc = Linear(C, C // c) -> ReLU -> Linear(C // c, C) -> Sigmoid``."""

    def __init__(self, blocks, channels, post_relu, c=4):
        super().__init__(blocks, post_relu)
        mid = channels // c
        if mid < 1:
            raise ValueError(f"shared-FC width {channels} is too small for reduction {c}")
        self.sharefc = nn.Sequential(
            nn.Linear(channels, mid),
            nn.ReLU(inplace=True),
            nn.Linear(mid, channels),
            nn.Sigmoid(),
        )

    def forward(self, x):
        for block in self.ModuleList:
            out, shortcut = block(x)
            mask = self.sharefc(_gap(out))
            x = self._combine(out, mask, shortcut)
        return x


# --------------------------------------------------------------------------------------
# Residual blocks: each returns (residual-branch output, shortcut); the stage combines them.
# --------------------------------------------------------------------------------------
def _conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class ResBasicBlock(nn.Module):
    """Post-activation basic block: branch ``bn2(conv2(relu(bn1(conv1 x))))``."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return out, (x if self.downsample is None else self.downsample(x))


class ResBottleneck(nn.Module):
    """Post-activation bottleneck (1x1, 3x3 with stride, 1x1 x4); branch ends at ``bn3``."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out, (x if self.downsample is None else self.downsample(x))


class PreActBasicBlock(nn.Module):
    """Pre-activation basic block with DIANet's extra ``bn_additional`` on the branch output.
    (Not in the official code, whose default ``block_name='BasicBlock'`` raises NameError.)"""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.downsample = downsample
        self.bn_additional = nn.BatchNorm2d(planes)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.bn_additional(out)
        return out, (x if self.downsample is None else self.downsample(x))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck plus ``bn_additional``; the shortcut conv sees the raw input."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.downsample = downsample
        self.bn_additional = nn.BatchNorm2d(planes * 4)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        out = self.bn_additional(out)
        return out, (x if self.downsample is None else self.downsample(x))


class WideBasicBlock(nn.Module):
    """WRN pre-activation block plus ``bn_additional``. When the width changes, the
    projection ``convShortcut`` acts on ``relu(bn1(x))``; otherwise the shortcut is ``x``."""

    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else _conv1x1(in_planes, out_planes, stride)
        self.bn_additional = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.bn_additional(self.conv2(out))
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        return out, shortcut


class ResNeXtBottleneck(nn.Module):
    """ResNeXt type-C bottleneck: 1x1 to ``D = cardinality * out // widen_factor``, grouped
    3x3 (stride here), 1x1 back to ``out``; projection shortcut (conv + BN) when widths differ."""

    def __init__(self, in_channels, out_channels, stride, cardinality, widen_factor):
        super().__init__()
        D = cardinality * out_channels // widen_factor
        self.conv_reduce = _conv1x1(in_channels, D)
        self.bn_reduce = nn.BatchNorm2d(D)
        self.conv_conv = nn.Conv2d(D, D, kernel_size=3, stride=stride, padding=1,
                                   groups=cardinality, bias=False)
        self.bn = nn.BatchNorm2d(D)
        self.conv_expand = _conv1x1(D, out_channels)
        self.bn_expand = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = nn.Sequential()
            self.shortcut.add_module("shortcut_conv", _conv1x1(in_channels, out_channels, stride))
            self.shortcut.add_module("shortcut_bn", nn.BatchNorm2d(out_channels))

    def forward(self, x):
        out = F.relu(self.bn_reduce(self.conv_reduce(x)))
        out = F.relu(self.bn(self.conv_conv(out)))
        out = self.bn_expand(self.conv_expand(out))
        return out, (x if self.shortcut is None else self.shortcut(x))


# --------------------------------------------------------------------------------------
# Initialisation (as each official family does it)
# --------------------------------------------------------------------------------------
@torch.no_grad()
def _init_resnet_style(model, zero_linear_bias=False):
    """Conv ~ N(0, sqrt(2 / (k*k*out))), BN weight 1 / bias 0, Linear left at PyTorch's
    default (WRN additionally zeroes every Linear bias). Visits modules in registration order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.normal_(0.0, math.sqrt(2.0 / fan))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif zero_linear_bias and isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.zero_()


@torch.no_grad()
def _init_resnext_style(model):
    """By state_dict key: '*conv*.weight' -> kaiming normal (fan_out), '*bn*.weight' -> 1,
    every '*.bias' -> 0 (BN, LSTM MLPs and classifier). The classifier weight gets kaiming
    normal (fan_in) first; LSTM Linear weights keep PyTorch's default."""
    if isinstance(model.classifier, nn.Linear):  # not the identity head of num_classes=0
        nn.init.kaiming_normal_(model.classifier.weight)
    for key, tensor in model.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "weight":
            if "conv" in key:
                nn.init.kaiming_normal_(tensor, mode="fan_out")
            if "bn" in key:
                tensor.fill_(1.0)
        elif leaf == "bias":
            tensor.zero_()


# --------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------
def _bottleneck_or_basic(depth, block_name, basic, bottleneck):
    name = block_name.lower()
    if name == "basicblock":
        if (depth - 2) % 6 != 0:
            raise ValueError(f"BasicBlock depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        return basic, (depth - 2) // 6
    if name == "bottleneck":
        if (depth - 2) % 9 != 0:
            raise ValueError(f"Bottleneck depth must be 9n+2 (29, 47, 56, 110, 164, ...), got {depth}")
        return bottleneck, (depth - 2) // 9
    raise ValueError(f"block_name must be 'BasicBlock' or 'Bottleneck', got {block_name!r}")


def _stage_info(model, widths, last_module=None):
    """feature_info of a 3-stage CIFAR net (reductions 1, 2, 4); ``last_module`` replaces the last
    stage's module name when a final norm/activation follows it (pre-activation nets)."""
    info = [dict(num_chs=w, reduction=2 ** i, module=m) for i, (w, m) in enumerate(zip(widths, model.stage_names))]
    if last_module:
        info[-1]["module"] = last_module
    return info


class DIAResNet(ClassifierModel):
    """Post-activation CIFAR ResNet with one DIA unit per stage (``dia_resnet``).
    Also hosts the shared-FC ablation through ``_stage``. Contract keywords (:mod:`common.models`):
    ``in_chans``, ``global_pool``, ``drop_rate`` (dropout before ``fc``); their defaults are the official model."""

    stage_names = ("layer1", "layer2", "layer3")
    blocks_attr = "ModuleList"

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock", *, in_chans=3, global_pool="avg",
                 drop_rate=0.0, _stage=None):
        super().__init__()
        block, n = _bottleneck_or_basic(depth, block_name, ResBasicBlock, ResBottleneck)
        stage = _stage or (lambda blocks, ch: DIAStage(blocks, ch, post_relu=True))
        self.inplanes = 16
        self.conv1 = _conv3x3(in_chans, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU(inplace=True)
        self.layer1 = stage(self._make_layer(block, 16, n), 16 * block.expansion)
        self.layer2 = stage(self._make_layer(block, 32, n, stride=2), 32 * block.expansion)
        self.layer3 = stage(self._make_layer(block, 64, n, stride=2), 64 * block.expansion)
        self.feature_info = _stage_info(self, [16 * block.expansion, 32 * block.expansion, 64 * block.expansion])
        self.init_head(64 * block.expansion, num_classes, global_pool, drop_rate)
        _init_resnet_style(self)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return layers

class FCShareResNet(DIAResNet):
    """Shared-FC ablation (``fc_share__dense``): DIA-ResNet with the LSTM replaced by one
    SE-MLP per stage of reduction ``c`` (official file never set ``c``; 4 = DIANet's r)."""

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock", c=4, **contract):
        super().__init__(depth, num_classes, block_name, **contract,
                         _stage=lambda blocks, ch: SharedFCStage(blocks, ch, post_relu=True, c=c))


class DIAPreResNet(ClassifierModel):
    """Pre-activation CIFAR ResNet with one DIA unit per stage (``dia_preresnet``); contract keywords as
    :class:`DIAResNet`. The last feature map is taken after the final BN + ReLU."""

    stage_names = ("layer1", "layer2", "layer3")
    blocks_attr = "ModuleList"

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock", *, in_chans=3, global_pool="avg",
                 drop_rate=0.0):
        super().__init__()
        block, n = _bottleneck_or_basic(depth, block_name, PreActBasicBlock, PreActBottleneck)
        self.inplanes = 16
        self.conv1 = _conv3x3(in_chans, 16)
        self.layer1 = DIAStage(self._make_layer(block, 16, n), 16 * block.expansion, post_relu=False)
        self.layer2 = DIAStage(self._make_layer(block, 32, n, stride=2), 32 * block.expansion,
                               post_relu=False)
        self.layer3 = DIAStage(self._make_layer(block, 64, n, stride=2), 64 * block.expansion,
                               post_relu=False)
        self.bn = nn.BatchNorm2d(64 * block.expansion)
        self.final_act = nn.ReLU(inplace=True)
        self.feature_info = _stage_info(self, [16 * block.expansion, 32 * block.expansion, 64 * block.expansion],
                                        "final_act")
        self.init_head(64 * block.expansion, num_classes, global_pool, drop_rate)
        _init_resnet_style(self)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return layers

class DIAWideResNet(ClassifierModel):
    """Wide ResNet (pre-activation) with one DIA unit per stage (``dia_wrn``). ``dropRate`` is the official
    dropout inside the blocks; the contract's ``drop_rate`` (timm's) is dropout before ``fc``."""

    stage_names = ("block1", "block2", "block3")
    blocks_attr = "ModuleList"

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0, *, in_chans=3, global_pool="avg",
                 drop_rate=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3x3(in_chans, widths[0])
        self.block1 = DIAStage(self._make_layer(widths[0], widths[1], n, 1, dropRate), widths[1],
                               post_relu=False)
        self.block2 = DIAStage(self._make_layer(widths[1], widths[2], n, 2, dropRate), widths[2],
                               post_relu=False)
        self.block3 = DIAStage(self._make_layer(widths[2], widths[3], n, 2, dropRate), widths[3],
                               post_relu=False)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.final_act = nn.ReLU(inplace=True)
        self.nChannels = widths[3]
        self.feature_info = _stage_info(self, widths[1:], "final_act")
        self.init_head(widths[3], num_classes, global_pool, drop_rate)
        _init_resnet_style(self, zero_linear_bias=True)

    @staticmethod
    def _make_layer(in_planes, out_planes, n, stride, dropRate):
        return [WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                               stride if i == 0 else 1, dropRate) for i in range(n)]

class DIAResNeXt(ClassifierModel):
    """CIFAR ResNeXt with one DIA unit per stage (``dia_resnext``). Stage widths are
    ``[32, 32 wf, 64 wf, 128 wf]``; ``dropRate`` is accepted but unused (as officially); the contract's
    ``drop_rate`` is dropout before ``classifier``."""

    head_name = "classifier"
    stage_names = ("stage_1", "stage_2", "stage_3")
    blocks_attr = "ModuleList"

    def __init__(self, cardinality, depth, num_classes, widen_factor=4, dropRate=0, *, in_chans=3,
                 global_pool="avg", drop_rate=0.0):
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n+2 (29, 101, ...), got {depth}")
        self.cardinality = cardinality
        self.depth = depth
        self.block_depth = (depth - 2) // 9
        self.widen_factor = widen_factor
        self.dropRate = dropRate  # unused, kept for signature compatibility
        self.stages = [32, 32 * widen_factor, 64 * widen_factor, 128 * widen_factor]
        self.conv_1_3x3 = _conv3x3(in_chans, 32)
        self.bn_1 = nn.BatchNorm2d(32)
        self.act_1 = nn.ReLU(inplace=True)
        self.stage_1 = DIAStage(self._make_stage(self.stages[0], self.stages[1], 1), self.stages[1],
                                post_relu=True)
        self.stage_2 = DIAStage(self._make_stage(self.stages[1], self.stages[2], 2), self.stages[2],
                                post_relu=True)
        self.stage_3 = DIAStage(self._make_stage(self.stages[2], self.stages[3], 2), self.stages[3],
                                post_relu=True)
        self.feature_info = _stage_info(self, self.stages[1:])
        self.init_head(self.stages[3], num_classes, global_pool, drop_rate)
        _init_resnext_style(self)

    def _make_stage(self, in_channels, out_channels, stride):
        return [ResNeXtBottleneck(in_channels if i == 0 else out_channels, out_channels,
                                  stride if i == 0 else 1, self.cardinality, self.widen_factor)
                for i in range(self.block_depth)]



# --------------------------------------------------------------------------------------
# Constructors (official names, signatures and defaults; then the contract's keywords)
# --------------------------------------------------------------------------------------
def _cfg(classifier="fc", **kw):
    return dict(input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, classifier=classifier, **kw)


@REGISTRY.register("dia_resnet", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck")))
def dia_resnet(depth, num_classes=1000, block_name="BasicBlock", *, in_chans=3, global_pool="avg", drop_rate=0.0):
    """DIA-ResNet; the paper model is ``dia_resnet(164, 100, 'bottleneck')`` (variant ``dia_resnet164``)."""
    return DIAResNet(depth, num_classes=num_classes, block_name=block_name, in_chans=in_chans,
                     global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("dia_preresnet", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck")))
def dia_preresnet(depth, num_classes=1000, block_name="BasicBlock", *, in_chans=3, global_pool="avg",
                  drop_rate=0.0):
    """DIA-PreResNet; the paper model is ``dia_preresnet(164, 100, 'bottleneck')`` (``dia_preresnet164``)."""
    return DIAPreResNet(depth, num_classes=num_classes, block_name=block_name, in_chans=in_chans,
                        global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("dia_wrn", default_cfg=_cfg(paper=dict(depth=52, widen_factor=4, dropRate=0.3)))
def dia_wrn(depth, num_classes, widen_factor=1, dropRate=0.0, *, in_chans=3, global_pool="avg", drop_rate=0.0):
    """DIA-WRN; the paper model is ``dia_wrn(52, 100, widen_factor=4, dropRate=0.3)`` (``dia_wrn52_4``)."""
    return DIAWideResNet(depth, num_classes, widen_factor=widen_factor, dropRate=dropRate, in_chans=in_chans,
                         global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("dia_resnext", default_cfg=_cfg(
    "classifier", paper=dict(cardinality=8, depth=101, widen_factor=4, dropRate=0)))
def dia_resnext(cardinality, depth, num_classes, widen_factor=4, dropRate=0, *, in_chans=3, global_pool="avg",
                drop_rate=0.0):
    """DIA-ResNeXt; the paper model (8x32d) is ``dia_resnext(8, 101, 100, widen_factor=4)``
    (``dia_resnext101_8x32``)."""
    return DIAResNeXt(cardinality, depth, num_classes, widen_factor=widen_factor, dropRate=dropRate,
                      in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("fc_share__dense", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck", c=4)))
def fc_share__dense(depth, num_classes=1000, block_name="BasicBlock", c=4, *, in_chans=3, global_pool="avg",
                    drop_rate=0.0):
    """Shared-FC ablation of DIA-ResNet (no LSTM, one SE-MLP per stage, reduction ``c``)."""
    return FCShareResNet(depth, num_classes=num_classes, block_name=block_name, c=c, in_chans=in_chans,
                         global_pool=global_pool, drop_rate=drop_rate)


# --------------------------------------------------------------------------------------
# The named variants: declared once here; timm, the benchmarks, the recipes and the tests read them
# --------------------------------------------------------------------------------------
def _variant_cfg(classifier="fc", first_conv="conv1", num_classes=100):
    """Complete timm pretrained_cfg of a CIFAR variant (no released weights: ``url`` is empty)."""
    return dict(
        url="", num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
        crop_mode="center", interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv=first_conv,
        classifier=classifier, license="unspecified (the official code states none; no released weights)",
        paper_name="DIANet: Dense-and-Implicit Attention Network (AAAI 2020)", paper_ids="arXiv:1905.10671",
        origin_url="https://github.com/gbup-group/DIANet",
    )


_NEXT = dict(classifier="classifier", first_conv="conv_1_3x3")
for _name, _ctor, _kw, _cfg_kw, _paper in (
    # the paper's CIFAR-100 models (in timm and in benchmarks/throughput.py)
    ("dia_resnet164", "dia_resnet", dict(depth=164, block_name="bottleneck"), {}, True),
    ("dia_preresnet164", "dia_preresnet", dict(depth=164, block_name="bottleneck"), {}, True),
    ("dia_wrn52_4", "dia_wrn", dict(depth=52, widen_factor=4, dropRate=0.3), {}, True),
    ("dia_resnext101_8x32", "dia_resnext", dict(cardinality=8, depth=101, widen_factor=4, dropRate=0), _NEXT, True),
    # shallow members of the same families (checked against the official code) and the ablation
    ("dia_resnet29", "dia_resnet", dict(depth=29, block_name="bottleneck"), {}, False),
    ("dia_preresnet29", "dia_preresnet", dict(depth=29, block_name="bottleneck"), {}, False),
    ("dia_wrn16_4", "dia_wrn", dict(depth=16, widen_factor=4, dropRate=0.3), {}, False),
    ("dia_resnext29_8x32", "dia_resnext", dict(cardinality=8, depth=29, widen_factor=4, dropRate=0), _NEXT, False),
    ("fc_share__dense164", "fc_share__dense", dict(depth=164, block_name="bottleneck", c=4), {}, False),
):
    REGISTRY.add_variant(_name, _ctor, _kw, pretrained_cfg=_variant_cfg(**_cfg_kw), paper=_paper)
del _name, _ctor, _kw, _cfg_kw, _paper


def create_model(name, **kwargs):
    """Build a registered model by its official name, e.g.
    ``create_model('dia_resnet', depth=164, num_classes=100, block_name='bottleneck')``, or a named variant,
    ``create_model('dia_resnet164')`` (``kwargs`` override the variant's). ``features_only=True`` (with
    ``out_indices``) returns the stage maps."""
    return REGISTRY.create(name, **kwargs)


list_models = REGISTRY.list_models  # the constructor names (shell-pattern filter)
variants = REGISTRY.variants  # the named variants, in declaration order
get_variant = REGISTRY.get_variant


# The paper's variants in timm: timm.create_model('dia_resnet164') once dianet is imported.
register_registry(REGISTRY)
