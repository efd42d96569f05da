"""RLA-MobileNetV2 and dsRLA-MobileNetV2 (official ``models/mobilenetv2_rla.py`` ``RLA_MobileNetV2`` and
``models/mobilenetv2_dsrla.py`` ``dsRLA_MobileNetV2``).

Block ``i`` of setting row ``j`` (torchvision's MobileNetV2 rows)::

    e   = conv1x1(x) if t != 1 else x                    # ConvBNReLU6 expansion
    y   = conv(cat(e, h))                                 # dw ConvBNReLU6 on hidden + k, 1x1 -> oup, BN, [ECA]
    x'  = x + y if stride 1 and inp == oup else y         # NOT in place: y stays the branch output
    h'  = pool(h) if stride 2 else h
    h   = rec(tanh(BN_ji(h' + conv_outs[j](y))))

``rec`` is **one** module for the whole network: officially ``[recurrent_conv(k, k)] * len(newcell)`` puts
the same conv five times into a ModuleList, so the state_dict has five keys (``recurrent_convs.{0..4}`` or
``recurrent_dsconvs.{0..4}``) for one tensor, ``parameters()`` counts it once, and on ``load_state_dict``
the last key wins. That is kept exactly. ``rla``: a full 3x3 conv (k -> k); ``dsrla``: a depthwise 3x3
conv (groups = k) with no pointwise part. Head: ``conv2(cat(x, relu6(bn2(h))))`` (ConvBNReLU6 1x1 ->
1280) -> pool -> ``classifier`` = ``[Dropout(0.2), Linear]``. ECA (``ECA=True``): k = 1 for rows with
c < 96, else 3, at ``conv.3``.

Deviations (no number changes): ``rla_channel`` honoured by every constructor (official ``_kN`` builders
take none); ``h0 = x.new_zeros`` (officially float32 on ``'cuda'`` unless ``model.flops``); the pool of
``h`` uses ``ceil_mode=True`` so sizes that are not multiples of 32 work; the head dropout is the contract's
``drop_rate`` (default 0.2, applied before ``classifier.1``; ``classifier.0`` is the official
``Dropout`` module kept for the layout).
"""
import torch
import torch.nn as nn

from common import models as _core
from common.layers.attention import ECAModule
from common.layers.conv import DepthwiseConv2d, cpu_channels_last
from common.models import ClassifierModel

from ._registry import REGISTRY, StageFeatures, conv1x1, rla_group_matcher

__all__ = ["ConvBNReLU", "RLAInvertedResidual", "RLAMobileNetV2", "RLA_MobileNetV2", "dsRLA_MobileNetV2",
           "make_divisible", "MBV2_SETTING", "OfficialHeadMixin"]

#: torchvision's MobileNetV2 rows (t, c, n, s)
MBV2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))


def make_divisible(v, divisor, min_value=None):
    """The TF / torchvision channel rounding (a multiple of ``divisor``, never below 90% of ``v``)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvBNReLU(nn.Sequential):
    """conv (no bias), BN, ReLU6 (keys ``0.weight``, ``1.*``)."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1):
        pad = (kernel_size - 1) // 2
        conv = (DepthwiseConv2d(cin, kernel_size, stride, pad, bias=False) if groups == cin == cout > 1 else
                nn.Conv2d(cin, cout, kernel_size, stride, pad, groups=groups, bias=False))
        super().__init__(conv, nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


def eca_ksize(c):
    """The official MobileNet ECA kernel: 1 for rows with c < 96, else 3."""
    return 1 if c < 96 else 3


class RLAInvertedResidual(nn.Module):
    """``InvertedResidual`` of the RLA MobileNets; ``forward(x, h) -> (x', y, h')``."""

    def __init__(self, inp, oup, stride, expand_ratio, rla_channel, ECA_ksize=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        wide = hidden + rla_channel
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        self.conv1x1 = ConvBNReLU(inp, hidden, kernel_size=1) if expand_ratio != 1 else None
        layers = [ConvBNReLU(wide, wide, stride=stride, groups=wide), nn.Conv2d(wide, oup, 1, 1, 0, bias=False),
                  nn.BatchNorm2d(oup)]
        if ECA_ksize is not None:
            layers.append(ECAModule(k_size=ECA_ksize))
        self.conv = nn.Sequential(*layers)
        self.pool_h = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else None

    def forward(self, x, h):
        e = x if self.conv1x1 is None else self.conv1x1(x)
        y = self.conv(torch.cat((e, h), dim=1))
        out = x + y if self.use_res_connect else y
        if self.pool_h is not None:
            h = self.pool_h(h)
        return out, y, h


def _stage(m, j, x, h):
    conv_out, rec = m.conv_outs[j], getattr(m, m.rec_name)[m.rec_for_stage[j]]
    for block, bn in zip(m.stages[j], m.stage_bns[j]):
        x, y, h = block(x, h)
        h = rec(m.tanh(bn(h + conv_out(y))))
    return x, h


class OfficialHeadMixin:
    """The official MobileNet head ``classifier = Sequential(Dropout(p), Linear)`` (keys ``classifier.1.*``)
    under the contract: ``get_classifier()`` is the Linear (``nn.Identity`` for ``num_classes=0``), the
    dropout is ``drop_rate`` applied by ``forward_head``."""

    head_name = "classifier"

    def reset_classifier(self, num_classes, global_pool=None):
        super().reset_classifier(num_classes, global_pool)
        if isinstance(self.classifier, nn.Linear):
            self.classifier = nn.Sequential(nn.Dropout(self.drop_rate), self.classifier)

    def get_classifier(self):
        return self.classifier[1] if isinstance(self.classifier, nn.Sequential) else self.classifier

    def _init_mobilenet(self):
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
            elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)
            elif isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0, 0.01)
                nn.init.zeros_(mod.bias)


class RLAMobileNetV2(OfficialHeadMixin, ClassifierModel):
    """``RLA_MobileNetV2(num_classes, width_mult, rla_channel, inverted_residual_setting, round_nearest,
    ECA)``; ``depthwise=True`` is ``dsRLA_MobileNetV2``. ``eca`` is accepted as the official builders' name
    of ``ECA``."""

    feature_children = ("conv1", "stages", "conv_outs", "recurrent_convs", "recurrent_dsconvs", "stage_bns",
                        "conv2", "bn2", "tanh", "act2")
    feature_attrs = ("rla_channel", "rec_name", "rec_for_stage", "map_rows")
    feature_cls = StageFeatures

    def __init__(self, num_classes=1000, width_mult=1.0, rla_channel=32, inverted_residual_setting=None,
                 round_nearest=8, ECA=False, depthwise=False, *, eca=None, in_chans=3, global_pool="avg",
                 drop_rate=0.2):
        super().__init__()
        if eca is not None:
            ECA = eca
        setting = [tuple(r) for r in (inverted_residual_setting or MBV2_SETTING)]
        if not setting or any(len(r) != 4 for r in setting):
            raise ValueError(f"inverted_residual_setting should be non-empty rows of 4 (t, c, n, s), got {setting}")
        self.rla_channel = k = int(rla_channel)
        self.depthwise = bool(depthwise)
        cin = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        self.conv1 = ConvBNReLU(in_chans, cin, stride=2)
        newcell = [0] + [i for i in range(1, len(setting)) if setting[i][3] == 2]
        # the stage -> index of the (one, shared) recurrent conv, as the official forward walks it
        self.rec_for_stage = [sum(1 for c in newcell if c <= j) - 1 for j in range(len(setting))]
        stages, bns, conv_outs, info, red = [], [], [], [], 2
        for j, (t, c, n, s) in enumerate(setting):
            cout = make_divisible(c * width_mult, round_nearest)
            bns.append(nn.ModuleList(nn.BatchNorm2d(k) for _ in range(n)))
            conv_outs.append(conv1x1(cout, k))
            blocks = []
            for i in range(n):
                blocks.append(RLAInvertedResidual(cin, cout, s if i == 0 else 1, t, k,
                                                  eca_ksize(c) if ECA else None))
                cin = cout
            stages.append(nn.ModuleList(blocks))
            red *= s
            info.append(dict(num_chs=cout, reduction=red, module=f"stages.{j}"))
        self.stages = nn.ModuleList(stages)
        self.conv_outs = nn.ModuleList(conv_outs)
        rec = nn.Conv2d(k, k, 3, 1, 1, groups=k if depthwise else 1, bias=False)
        self.rec_name = "recurrent_dsconvs" if depthwise else "recurrent_convs"
        self.add_module(self.rec_name, nn.ModuleList([rec] * len(newcell)))  # ONE module, len(newcell) keys
        self.stage_bns = nn.ModuleList(bns)
        self.conv2 = ConvBNReLU(cin + k, self.last_channel, kernel_size=1)
        self.bn2 = nn.BatchNorm2d(k)
        self.act2 = nn.ReLU6(inplace=True)
        self.tanh = nn.Tanh()
        # the maps at strides 2 / 4 / 8 / 16 (last row of each stride), then the head conv at 32 (timm's choice)
        keep = [i for i in range(len(info)) if i == len(info) - 1 or info[i + 1]["reduction"] != info[i]["reduction"]]
        self.map_rows = keep[:-1]
        self.feature_info = [info[i] for i in keep[:-1]] + [
            dict(num_chs=self.last_channel, reduction=info[-1]["reduction"], module="conv2")]
        self.stage_names = tuple(f"stages.{j}" for j in range(len(setting)))
        self.init_head(self.last_channel, num_classes, global_pool, drop_rate)
        self._init_mobilenet()

    @staticmethod
    def trunk_fn(m, x, n_maps=None):
        # on CPU (float32) the trunk runs channels_last: oneDNN's depth-wise kernels are several times faster
        # in that layout (the same numbers)
        x = cpu_channels_last(m.conv1(x))
        h = cpu_channels_last(x.new_zeros(x.shape[0], m.rla_channel, x.shape[2], x.shape[3]))
        ckpt = m.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        maps = []
        for j in range(len(m.stages)):
            x, h = _core.checkpoint(_stage, m, j, x, h, use_reentrant=False) if ckpt else _stage(m, j, x, h)
            if j in m.map_rows:
                maps.append(x)
                if n_maps is not None and len(maps) == n_maps:
                    return maps
        maps.append(m.conv2(torch.cat((x, m.act2(m.bn2(h))), dim=1)))
        return maps

    def forward_features(self, x):
        return self.trunk_fn(self, x)[-1]

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        return rla_group_matcher(coarse, ("conv1",), ("conv_outs", self.rec_name), ("conv2", "bn2"))


@REGISTRY.register("RLA_MobileNetV2")
def RLA_MobileNetV2(num_classes=1000, width_mult=1.0, rla_channel=32, inverted_residual_setting=None,
                    round_nearest=8, ECA=False, *, eca=None, in_chans=3, global_pool="avg", drop_rate=0.2):
    """RLA-MobileNetV2 with the full 3x3 shared recurrent conv (``rla_mobilenetv2`` and its ``_kN``)."""
    return RLAMobileNetV2(num_classes, width_mult, rla_channel, inverted_residual_setting, round_nearest, ECA,
                          depthwise=False, eca=eca, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("dsRLA_MobileNetV2")
def dsRLA_MobileNetV2(num_classes=1000, width_mult=1.0, rla_channel=32, inverted_residual_setting=None,
                      round_nearest=8, ECA=False, *, eca=None, in_chans=3, global_pool="avg", drop_rate=0.2):
    """dsRLA-MobileNetV2, the README's "RLA-MobileNetV2": depthwise shared recurrent conv."""
    return RLAMobileNetV2(num_classes, width_mult, rla_channel, inverted_residual_setting, round_nearest, ECA,
                          depthwise=True, eca=eca, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)
