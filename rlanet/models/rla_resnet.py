"""RLA-ResNet / RLA-ResNeXt (official ``models/resnet_rla.py``: ``RLA_ResNet``, ``RLA_Bottleneck``).

A hidden state ``h`` with ``k = rla_channel`` channels runs beside the main network. Block ``t`` of stage
``s`` reads ``cat(x, h)`` and, after it::

    x_t = relu(bn3(conv3(...conv1(cat(x_{t-1}, h_{t-1})))) [-> se -> eca] + shortcut(x_{t-1}))
    h_t = recurrent_conv_s(tanh(BN_t(h_{t-1}' + conv_out_s(x_t))))

``h'`` is ``h`` average-pooled 2x2 in the first block of stages 2-4 (pooled inside the block); ``conv_out_s``
(1x1, 4p -> k) and ``recurrent_conv_s`` (3x3, k -> k) are shared by the blocks of a stage, ``BN_t`` is one
per block. ``h0 = 0`` after the stem. Head: ``cat(x_L, relu(bn2(h)))`` -> pool -> ``fc``.

``conv_out`` reads the block output **after** the residual add and the ReLU: officially the branch output
``y`` is returned after ``out += identity; out = relu(out)`` ran in place on the same tensor, so ``y`` is
``x_t`` (not the pre-add branch of the paper's figure). That is written out explicitly here.

State_dict keys, shapes and order are the official ones (``conv1, bn1, conv_outs, recurrent_convs, stages,
stage_bns, bn2, fc``), so official checkpoints load with ``strict=True``. Deviations, none of which changes
a number the official code can compute:

* ``rla_channel`` is honoured by every constructor (officially only ``rla_resnet50_eca`` passes it on; the
  default stays 32, the released checkpoints' value); ``num_classes`` is accepted everywhere;
* ``h0`` is ``x.new_zeros`` (the input's dtype and device; officially float32 on ``'cuda'`` when available);
* the 2x2 average pool of ``h`` uses ``ceil_mode=True``, so inputs whose size is not a multiple of 32 work
  (officially ``h + conv_out(x)`` fails on a size mismatch); at even sizes it is the same pool.

``features_only=True`` gives ``x`` after each stage (256/512/1024/2048 channels at strides 4-32, the
detection backbone's maps); its state_dict is the official detection backbone's (no ``bn2``, no ``fc``).
"""
import torch
import torch.nn as nn

from common import models as _core
from common.layers.attention import ECAModule, SEModule
from common.models import ClassifierModel

from ._registry import REGISTRY, StageFeatures, conv1x1, conv3x3

__all__ = ["RLABottleneck", "RLAResNet", "RLA_ResNet"]


def _pool_h():
    return nn.AvgPool2d(2, stride=2, ceil_mode=True)


class RLABottleneck(nn.Module):
    """``RLA_Bottleneck``: a ResNet bottleneck whose ``conv1`` reads ``cat(x, h)`` (``feed_h=False``: only
    ``x``, ablation ``rh``). ``forward(x, h) -> (x_t, branch, h')``: block output (after add and ReLU), the
    residual branch before the add, and ``h`` pooled when the block downsamples."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, rla_channel=32, SE=False, ECA_size=None,
                 groups=1, base_width=64, dilation=1, reduction=16, feed_h=True):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.feed_h = feed_h
        self.conv1 = conv1x1(inplanes + (rla_channel if feed_h else 0), width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.pool_h = _pool_h() if downsample is not None and stride != 1 else None
        self.se = SEModule(out, reduction) if SE else None
        self.eca = ECAModule(k_size=int(ECA_size)) if ECA_size is not None else None

    def forward(self, x, h):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(torch.cat((x, h), dim=1) if self.feed_h else x)
        out = self.relu(self.bn1(out))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.eca is not None:
            out = self.eca(out)
        branch = out
        out = self.relu(out + identity)
        if self.pool_h is not None:
            h = self.pool_h(h)
        return out, branch, h


def _stage(m, s, x, h):
    """Stage ``s``: its blocks and the recurrent update after each."""
    conv_out, rec = m.conv_outs[s], m.recurrent_convs[s]
    for block, bn in zip(m.stages[s], m.stage_bns[s]):
        x, _, h = block(x, h)
        h = rec(m.tanh(bn(h + conv_out(x))))
    return x, h


class RLAResNet(ClassifierModel):
    """``RLA_ResNet(block, layers, num_classes, rla_channel, SE, ECA, zero_init_last_bn, groups,
    width_per_group)`` with the official arguments (``k_size`` is accepted as the official builders' name
    for ``ECA``, the per-stage ECA kernel sizes); then the contract's ``in_chans``, ``global_pool``,
    ``drop_rate`` (dropout before ``fc``; 0 as officially)."""

    stage_names = ("stages.0", "stages.1", "stages.2", "stages.3")
    feature_children = ("conv1", "bn1", "act1", "maxpool", "conv_outs", "recurrent_convs", "stages",
                        "stage_bns", "tanh")
    feature_attrs = ("rla_channel",)
    feature_cls = StageFeatures

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, rla_channel=32, SE=False, ECA=None,
                 zero_init_last_bn=True, groups=1, width_per_group=64, replace_stride_with_dilation=None, *,
                 k_size=None, in_chans=3, global_pool="avg", drop_rate=0.0):
        super().__init__()
        if k_size is not None:
            if ECA is not None:
                raise ValueError("RLA_ResNet: give the ECA kernel sizes once (ECA= or k_size=), not both")
            ECA = k_size
        ECA = [None] * 4 if ECA is None else list(ECA)
        if len(ECA) != 4 or len(layers) != 4:
            raise ValueError(f"RLA_ResNet: layers and ECA need 4 entries (one per stage), got layers={layers}, "
                             f"ECA={ECA}")
        dilate = list(replace_stride_with_dilation or [False] * 3)
        if len(dilate) != 3:
            raise ValueError(f"replace_stride_with_dilation should be None or 3 booleans, got {dilate}")
        self.layers = tuple(layers)
        self.rla_channel = k = int(rla_channel)
        self.groups, self.base_width = groups, width_per_group
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        built = [self._make_layer(64 * 2 ** i, layers[i], k, SE, ECA[i], 1 if i == 0 else 2,
                                  dilate[i - 1] if i else False) for i in range(4)]
        stages, bns, conv_outs, recs = zip(*built)
        self.conv_outs = nn.ModuleList(conv_outs)
        self.recurrent_convs = nn.ModuleList(recs)
        self.stages = nn.ModuleList(stages)
        self.stage_bns = nn.ModuleList(bns)
        self.tanh = nn.Tanh()
        self.bn2 = nn.BatchNorm2d(k)
        self.act2 = nn.ReLU(inplace=True)
        chs = [64 * 2 ** i * RLABottleneck.expansion for i in range(4)]
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"stages.{i}") for i, c in enumerate(chs)]
        self.init_head(chs[-1] + k, num_classes, global_pool, drop_rate)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(mod.weight, 1)
                nn.init.constant_(mod.bias, 0)
        if zero_init_last_bn:
            for mod in self.modules():
                if isinstance(mod, RLABottleneck):
                    nn.init.constant_(mod.bn3.weight, 0)

    def _make_layer(self, planes, blocks, k, SE, ECA_size, stride, dilate):
        out = planes * RLABottleneck.expansion
        conv_out, rec = conv1x1(out, k), conv3x3(k, k)
        prev_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        kw = dict(rla_channel=k, SE=SE, ECA_size=ECA_size, groups=self.groups, base_width=self.base_width)
        layers = [RLABottleneck(self.inplanes, planes, stride, downsample, dilation=prev_dilation, **kw)]
        self.inplanes = out
        layers += [RLABottleneck(out, planes, dilation=self.dilation, **kw) for _ in range(1, blocks)]
        return nn.ModuleList(layers), nn.ModuleList(nn.BatchNorm2d(k) for _ in range(blocks)), conv_out, rec

    # -- trunk: the recurrence across stages --------------------------------------------------------
    @staticmethod
    def trunk_fn(m, x, n_maps=None):
        """Stem and stages; returns the stage maps (the first ``n_maps``, or all four with ``h``)."""
        x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
        h = x.new_zeros(x.shape[0], m.rla_channel, x.shape[2], x.shape[3])
        ckpt = m.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        maps = []
        for s in range(len(m.stages)):
            x, h = _core.checkpoint(_stage, m, s, x, h, use_reentrant=False) if ckpt else _stage(m, s, x, h)
            maps.append(x)
            if n_maps is not None and len(maps) == n_maps:
                return maps
        return maps, h

    def forward_features(self, x):
        maps, h = self.trunk_fn(self, x)
        return torch.cat((maps[-1], self.act2(self.bn2(h))), dim=1)

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return rla_group_matcher(coarse, ("conv1", "bn1"), ("conv_outs", "recurrent_convs"), ("bn2",))


def rla_group_matcher(coarse, stem, per_stage, post, blocks=("stages", "stage_bns")):
    """timm group matcher of the RLA models: the stem; per block ``stages.s.t`` with its ``stage_bns.s.t``
    (per stage when ``coarse``); the stage's shared modules (``conv_outs.s``, ...) join the stage's last
    block; the modules of ``post`` join the last block."""
    def alt(names):
        return "|".join(names)

    if coarse:
        blk = [(rf"^(?:{alt(blocks + per_stage)})\.(\d+)\.", None)]
    else:
        blk = [(rf"^(?:{alt(blocks)})\.(\d+)\.(\d+)\.", None), (rf"^(?:{alt(per_stage)})\.(\d+)\.", (99999,))]
    return dict(stem=rf"^(?:{alt(stem)})\.", blocks=blk + [(rf"^(?:{alt(post)})\.", (99999,))])


@REGISTRY.register("RLA_ResNet")
def RLA_ResNet(layers=(3, 4, 6, 3), num_classes=1000, rla_channel=32, SE=False, ECA=None, zero_init_last_bn=True,
               groups=1, width_per_group=64, *, k_size=None, in_chans=3, global_pool="avg", drop_rate=0.0):
    """RLA-ResNet / RLA-ResNeXt (the official class; its builders are the named variants, ``rla_resnet50``
    = ``RLA_ResNet(layers=(3, 4, 6, 3))``)."""
    return RLAResNet(layers, num_classes, rla_channel, SE, ECA, zero_init_last_bn, groups, width_per_group,
                     k_size=k_size, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)
