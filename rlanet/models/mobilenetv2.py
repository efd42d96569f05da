"""The baseline MobileNetV2 of the official registry (``models/mobilenetv2.py``: torchvision's, with the
optional ECA at ``conv.<last>``): ``features.{0..18}`` (stem, 17 inverted residuals, head conv) and
``classifier.1``. Each inverted residual is a stage for grad checkpointing; ``features_only`` gives the maps
at strides 2 / 4 / 8 / 16 and the head conv at 32."""
import torch
import torch.nn as nn

from common import models as _core
from common.layers.attention import ECAModule
from common.models import ClassifierModel

from ._registry import REGISTRY, StageFeatures
from .mobilenetv2_rla import MBV2_SETTING, ConvBNReLU, OfficialHeadMixin, eca_ksize, make_divisible

__all__ = ["InvertedResidual", "MobileNetV2Base", "MobileNetV2"]


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, ECA_ksize=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNReLU(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        if ECA_ksize is not None:
            layers.append(ECAModule(k_size=ECA_ksize))
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Base(OfficialHeadMixin, ClassifierModel):
    """``MobileNetV2(num_classes, width_mult, inverted_residual_setting, round_nearest, ECA)``."""

    feature_children = ("features",)
    feature_attrs = ("map_blocks",)
    feature_cls = StageFeatures

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8, ECA=False,
                 *, eca=None, in_chans=3, global_pool="avg", drop_rate=0.2):
        super().__init__()
        if eca is not None:
            ECA = eca
        setting = [tuple(r) for r in (inverted_residual_setting or MBV2_SETTING)]
        cin = make_divisible(32 * width_mult, round_nearest)
        last = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        feats, info, red = [ConvBNReLU(in_chans, cin, stride=2)], [], 2
        for t, c, n, s in setting:
            cout = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, eca_ksize(c) if ECA else None))
                cin = cout
            red *= s
            info.append(dict(num_chs=cout, reduction=red, module=f"features.{len(feats) - 1}"))
        feats.append(ConvBNReLU(cin, last, kernel_size=1))
        self.features = nn.Sequential(*feats)
        keep = [i for i in range(len(info) - 1) if info[i + 1]["reduction"] != info[i]["reduction"]]
        self.map_blocks = [int(info[i]["module"].split(".")[1]) for i in keep]
        self.feature_info = [info[i] for i in keep] + [
            dict(num_chs=last, reduction=info[-1]["reduction"], module=f"features.{len(feats) - 1}")]
        self.stage_names = tuple(f"features.{i}" for i in range(1, len(feats) - 1))
        self.init_head(last, num_classes, global_pool, drop_rate)
        self._init_mobilenet()

    @staticmethod
    def trunk_fn(m, x, n_maps=None):
        ckpt = m.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        maps, last = [], len(m.features) - 1
        for i, block in enumerate(m.features):
            x = _core.checkpoint(block, x, use_reentrant=False) if ckpt and 0 < i < last else block(x)
            if i in m.map_blocks or i == last:
                maps.append(x)
                if n_maps is not None and len(maps) == n_maps:
                    break
        return maps

    def forward_features(self, x):
        return self.trunk_fn(self, x)[-1]

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        last = len(self.features) - 1
        return dict(stem=r"^features\.0\.", blocks=[(rf"^features\.{last}\.", (99999,)), (r"^features\.(\d+)\.", None)])


@REGISTRY.register("MobileNetV2")
def MobileNetV2(num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8, ECA=False, *,
                eca=None, in_chans=3, global_pool="avg", drop_rate=0.2):
    """The official baseline ``mobilenet_v2`` / ``mobilenetv2_eca``."""
    return MobileNetV2Base(num_classes, width_mult, inverted_residual_setting, round_nearest, ECA, eca=eca,
                           in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)
