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

from common.registry import Registry

__all__ = [
    "DIALSTMCell", "DIAStage", "SharedFCStage",
    "ResBasicBlock", "ResBottleneck", "PreActBasicBlock", "PreActBottleneck",
    "WideBasicBlock", "ResNeXtBottleneck",
    "DIAResNet", "DIAPreResNet", "DIAWideResNet", "DIAResNeXt", "FCShareResNet",
    "dia_resnet", "dia_preresnet", "dia_wrn", "dia_resnext", "fc_share__dense",
    "CIFAR_MEAN", "CIFAR_STD", "REGISTRY", "create_model", "list_models",
]

REGISTRY = Registry("dianet")

# Normalisation used by the official training script for both CIFAR-10 and CIFAR-100.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------------------
# DIA unit
# --------------------------------------------------------------------------------------
class _GateMLP(nn.Module):
    """``Linear(C, C // r) -> ReLU -> Linear(C // r, 4 * hidden)``; keys ``seq.0`` / ``seq.2``."""

    def __init__(self, in_features, hidden, reduction=4):
        super().__init__()
        mid = in_features // reduction
        if mid < 1:
            raise ValueError(f"DIA-LSTM width {in_features} is too small for reduction {reduction}")
        self.seq = nn.Sequential(
            nn.Linear(in_features, mid),
            nn.ReLU(inplace=True),
            nn.Linear(mid, 4 * hidden),
        )

    def forward(self, x):
        return self.seq(x)


class DIALSTMCell(nn.Module):
    """The modified LSTM cell of DIANet (one layer; input size == hidden size == C).

    ``forward(a, (h, c)) -> (h_new, c_new)``, all of shape ``(B, C)``. Both transforms are
    bottlenecked by ``reduction`` and both carry biases (two additive biases on the gates,
    like ``nn.LSTMCell``). The output is ``sigmoid(o) * sigmoid(c_new)``.
    """

    def __init__(self, channels, reduction=4):
        super().__init__()
        self.channels = channels
        # ModuleLists of length one keep the official key names ``w_ih.0`` / ``w_hh.0``.
        self.w_ih = nn.ModuleList([_GateMLP(channels, channels, reduction)])
        self.w_hh = nn.ModuleList([_GateMLP(channels, channels, reduction)])

    def init_state(self, a):
        zeros = a.new_zeros(a.shape[0], self.channels)
        return zeros, zeros

    def forward(self, a, state):
        h, c = state
        gates = self.w_ih[0](a) + self.w_hh[0](h)
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.sigmoid(c_new)
        return h_new, c_new


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


class DIAResNet(nn.Module):
    """Post-activation CIFAR ResNet with one DIA unit per stage (``dia_resnet``).
    Also hosts the shared-FC ablation through ``stage_cls``."""

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock", *,
                 _stage=None):
        super().__init__()
        block, n = _bottleneck_or_basic(depth, block_name, ResBasicBlock, ResBottleneck)
        stage = _stage or (lambda blocks, ch: DIAStage(blocks, ch, post_relu=True))
        self.inplanes = 16
        self.conv1 = _conv3x3(3, 16)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = stage(self._make_layer(block, 16, n), 16 * block.expansion)
        self.layer2 = stage(self._make_layer(block, 32, n, stride=2), 32 * block.expansion)
        self.layer3 = stage(self._make_layer(block, 64, n, stride=2), 64 * block.expansion)
        self.num_features = 64 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
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

    def forward_features(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


class FCShareResNet(DIAResNet):
    """Shared-FC ablation (``fc_share__dense``): DIA-ResNet with the LSTM replaced by one
    SE-MLP per stage of reduction ``c`` (official file never set ``c``; 4 = DIANet's r)."""

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock", c=4):
        super().__init__(depth, num_classes, block_name,
                         _stage=lambda blocks, ch: SharedFCStage(blocks, ch, post_relu=True, c=c))


class DIAPreResNet(nn.Module):
    """Pre-activation CIFAR ResNet with one DIA unit per stage (``dia_preresnet``)."""

    def __init__(self, depth, num_classes=1000, block_name="BasicBlock"):
        super().__init__()
        block, n = _bottleneck_or_basic(depth, block_name, PreActBasicBlock, PreActBottleneck)
        self.inplanes = 16
        self.conv1 = _conv3x3(3, 16)
        self.layer1 = DIAStage(self._make_layer(block, 16, n), 16 * block.expansion, post_relu=False)
        self.layer2 = DIAStage(self._make_layer(block, 32, n, stride=2), 32 * block.expansion,
                               post_relu=False)
        self.layer3 = DIAStage(self._make_layer(block, 64, n, stride=2), 64 * block.expansion,
                               post_relu=False)
        self.num_features = 64 * block.expansion
        self.bn = nn.BatchNorm2d(self.num_features)
        self.fc = nn.Linear(self.num_features, num_classes)
        _init_resnet_style(self)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * block.expansion, stride))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return layers

    def forward_features(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return F.relu(self.bn(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


class DIAWideResNet(nn.Module):
    """Wide ResNet (pre-activation) with one DIA unit per stage (``dia_wrn``)."""

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = _conv3x3(3, widths[0])
        self.block1 = DIAStage(self._make_layer(widths[0], widths[1], n, 1, dropRate), widths[1],
                               post_relu=False)
        self.block2 = DIAStage(self._make_layer(widths[1], widths[2], n, 2, dropRate), widths[2],
                               post_relu=False)
        self.block3 = DIAStage(self._make_layer(widths[2], widths[3], n, 2, dropRate), widths[3],
                               post_relu=False)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.num_features = self.nChannels = widths[3]
        self.fc = nn.Linear(widths[3], num_classes)
        _init_resnet_style(self, zero_linear_bias=True)

    @staticmethod
    def _make_layer(in_planes, out_planes, n, stride, dropRate):
        return [WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                               stride if i == 0 else 1, dropRate) for i in range(n)]

    def forward_features(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return F.relu(self.bn1(x))

    def forward(self, x):
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))


class DIAResNeXt(nn.Module):
    """CIFAR ResNeXt with one DIA unit per stage (``dia_resnext``). Stage widths are
    ``[32, 32 wf, 64 wf, 128 wf]``; ``dropRate`` is accepted but unused (as officially)."""

    def __init__(self, cardinality, depth, num_classes, widen_factor=4, dropRate=0):
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"ResNeXt depth must be 9n+2 (29, 101, ...), got {depth}")
        self.cardinality = cardinality
        self.depth = depth
        self.block_depth = (depth - 2) // 9
        self.widen_factor = widen_factor
        self.num_classes = num_classes
        self.dropRate = dropRate  # unused, kept for signature compatibility
        self.stages = [32, 32 * widen_factor, 64 * widen_factor, 128 * widen_factor]
        self.conv_1_3x3 = _conv3x3(3, 32)
        self.bn_1 = nn.BatchNorm2d(32)
        self.stage_1 = DIAStage(self._make_stage(self.stages[0], self.stages[1], 1), self.stages[1],
                                post_relu=True)
        self.stage_2 = DIAStage(self._make_stage(self.stages[1], self.stages[2], 2), self.stages[2],
                                post_relu=True)
        self.stage_3 = DIAStage(self._make_stage(self.stages[2], self.stages[3], 2), self.stages[3],
                                post_relu=True)
        self.num_features = self.stages[3]
        self.classifier = nn.Linear(self.stages[3], num_classes)
        _init_resnext_style(self)

    def _make_stage(self, in_channels, out_channels, stride):
        return [ResNeXtBottleneck(in_channels if i == 0 else out_channels, out_channels,
                                  stride if i == 0 else 1, self.cardinality, self.widen_factor)
                for i in range(self.block_depth)]

    def forward_features(self, x):
        x = F.relu(self.bn_1(self.conv_1_3x3(x)))
        return self.stage_3(self.stage_2(self.stage_1(x)))

    def forward(self, x):
        return self.classifier(self.forward_features(x).mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------
# Constructors (official names, signatures and defaults)
# --------------------------------------------------------------------------------------
def _cfg(classifier="fc", **kw):
    return dict(input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD, classifier=classifier, **kw)


@REGISTRY.register("dia_resnet", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck")))
def dia_resnet(depth, num_classes=1000, block_name="BasicBlock"):
    """DIA-ResNet; the paper model is ``dia_resnet(164, 100, 'bottleneck')``."""
    return DIAResNet(depth, num_classes=num_classes, block_name=block_name)


@REGISTRY.register("dia_preresnet", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck")))
def dia_preresnet(depth, num_classes=1000, block_name="BasicBlock"):
    """DIA-PreResNet; the paper model is ``dia_preresnet(164, 100, 'bottleneck')``."""
    return DIAPreResNet(depth, num_classes=num_classes, block_name=block_name)


@REGISTRY.register("dia_wrn", default_cfg=_cfg(paper=dict(depth=52, widen_factor=4, dropRate=0.3)))
def dia_wrn(depth, num_classes, widen_factor=1, dropRate=0.0):
    """DIA-WRN; the paper model is ``dia_wrn(52, 100, widen_factor=4, dropRate=0.3)``."""
    return DIAWideResNet(depth, num_classes, widen_factor=widen_factor, dropRate=dropRate)


@REGISTRY.register("dia_resnext", default_cfg=_cfg(
    "classifier", paper=dict(cardinality=8, depth=101, widen_factor=4, dropRate=0)))
def dia_resnext(cardinality, depth, num_classes, widen_factor=4, dropRate=0):
    """DIA-ResNeXt; the paper model (8x32d) is ``dia_resnext(8, 101, 100, widen_factor=4)``."""
    return DIAResNeXt(cardinality, depth, num_classes, widen_factor=widen_factor, dropRate=dropRate)


@REGISTRY.register("fc_share__dense", default_cfg=_cfg(paper=dict(depth=164, block_name="bottleneck", c=4)))
def fc_share__dense(depth, num_classes=1000, block_name="BasicBlock", c=4):
    """Shared-FC ablation of DIA-ResNet (no LSTM, one SE-MLP per stage, reduction ``c``)."""
    return FCShareResNet(depth, num_classes=num_classes, block_name=block_name, c=c)


def create_model(name, **kwargs):
    """Build a registered model by its official name, e.g.
    ``create_model('dia_resnet', depth=164, num_classes=100, block_name='bottleneck')``."""
    return REGISTRY.create(name, **kwargs)


def list_models(pattern="*"):
    return REGISTRY.list_models(pattern)


# The paper's four CIFAR-100 models under fixed names in timm (``timm.create_model('dia_resnet164')``).
TIMM_MODELS = {
    "dia_resnet164": (dia_resnet, dict(depth=164, block_name="bottleneck"), "fc"),
    "dia_preresnet164": (dia_preresnet, dict(depth=164, block_name="bottleneck"), "fc"),
    "dia_wrn52_4": (dia_wrn, dict(depth=52, widen_factor=4, dropRate=0.3), "fc"),
    "dia_resnext101_8x32": (dia_resnext, dict(cardinality=8, depth=101, widen_factor=4, dropRate=0), "classifier"),
}


def _register_timm():
    import functools

    from common.timm_compat import register_timm

    for name, (ctor, kw, head) in TIMM_MODELS.items():
        builder = functools.partial(ctor, **kw)
        builder.__module__ = __name__
        register_timm(name, builder, dict(num_classes=100, input_size=(3, 32, 32), mean=CIFAR_MEAN, std=CIFAR_STD,
                                          classifier=head, first_conv="conv1" if head == "fc" else "conv_1_3x3",
                                          crop_pct=1.0))


try:
    _register_timm()
except ImportError:  # timm is a dependency, but the models work without it
    pass
