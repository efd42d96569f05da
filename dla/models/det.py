"""The detection backbone of the DLA code base: ``ResNet_dlal`` (official ``mmdetection/mmdet/models/backbones/
resnet_dlal.py``), in plain PyTorch, on the ImageNet model's blocks and DLA-L stages.

``ResNet_dlal(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')`` returns the four stage
maps ``(C2, C3, C4, C5)`` (256 / 512 / 1024 / 2048 channels at strides 4 / 8 / 16 / 32). Its keys are the
ImageNet ``resnet50_dla_l``'s without ``fc``, with two differences that come from the official code:

* the DSU bottleneck is ``C // 20`` (ImageNet: ``C // 16``): ``layerK.lstm.w_{ih,hh}.0.seq.{0,2}`` have other
  shapes (24 tensors), so a classification checkpoint cannot fill them;
* the stage's depth-wise conv is ``layerK.excite`` (ImageNet: ``layerK.extict``), the same tensor under another
  name.

Loading a classification checkpoint reports both (:class:`common.backbone.LoadReport`);
``python -m dla.tools.convert_to_det`` writes a detection-ready checkpoint (``extict`` renamed ``excite``,
``fc`` dropped). ``drop_rate`` and ``drop_path`` are accepted and unused, as officially (the detection
branches have no DropPath); ``style`` is accepted and unused.

Init (``init_weights()``): without a checkpoint, mmdet's ``init_cfg`` of the official backbone (Kaiming-normal
fan_out for every Conv2d, BatchNorm 1 / 0, and ``bn3`` = 0 in every block with ``zero_init_last_bn``; the DSU
Linear layers and ``lambda_t`` keep their construction values); with ``pretrained`` / ``init_cfg=dict(
type='Pretrained', checkpoint=...)`` only the checkpoint is loaded (non-strict, reported).
"""
import re

import torch.nn as nn

from common.backbone import DetectionBackbone
from common.layers.init import init_resnet_

from .blocks import Bottleneck
from .imagenet import ResNetDLAL

__all__ = ["ResNet_dlal"]


class _DetTrunk(ResNetDLAL):
    """The ImageNet DLA-L ResNet with the detection backbone's DSU reduction and depth-wise conv name."""

    dsu_reduction = 20
    dw_name = "excite"


_STAGE_KEY = re.compile(r"^layer(\d)\.")


class ResNet_dlal(DetectionBackbone):  # noqa: N801 (the official class name)
    """Official arguments (``block`` must be the bottleneck, the only block of the official file)."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, block=Bottleneck, layers=(3, 4, 6, 3), SE=False, ECA=None, frozen_stages=-1, norm_eval=True,
                 style="pytorch", zero_init_last_bn=True, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=nn.BatchNorm2d, drop_rate=0.0, drop_path=0.2,
                 pretrained=None, init_cfg=None, *, fix_batch_context=False):
        super().__init__()
        if block is not Bottleneck and block not in ("Bottleneck", "bottleneck"):
            raise ValueError(f"ResNet_dlal: block must be the Bottleneck (the official file has no other), got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"ResNet_dlal: layers needs 4 entries (blocks per stage), got {list(layers)}")
        self.setup_backbone(frozen_stages, norm_eval, pretrained, init_cfg)
        self.style, self.drop_rate, self.drop_path = style, float(drop_rate), float(drop_path)
        self.zero_init_last_bn = bool(zero_init_last_bn)
        self.layers = tuple(layers)
        trunk = _DetTrunk(list(layers), num_classes=0, SE=SE, ECA=ECA, zero_init_last_bn=zero_init_last_bn,
                          groups=groups, width_per_group=width_per_group,
                          replace_stride_with_dilation=replace_stride_with_dilation, norm_layer=norm_layer,
                          drop_path=0.0, fix_batch_context=fix_batch_context)
        for name in ("conv1", "bn1", "relu", "maxpool") + self.stage_names:
            self.add_module(name, getattr(trunk, name))
        self.feature_info = [dict(info) for info in trunk.feature_info]
        self.out_channels = [info["num_chs"] for info in self.feature_info]
        self._freeze_stages()

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return tuple(outs)

    # -- DetectionBackbone --------------------------------------------------------------------------
    def frozen_modules(self):
        mods = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        return mods + [getattr(self, f"layer{i}") for i in range(1, min(self.frozen_stages, 4) + 1)]

    def official_init_(self):
        init_resnet_(self, self.zero_init_last_bn, Bottleneck)

    def convert_state_dict(self, state_dict):
        out, renamed = {}, {}
        for k, v in state_dict.items():
            m = re.match(r"^(layer\d)\.extict\.weight$", k)
            if m:
                renamed[k] = f"{m.group(1)}.excite.weight"
                out[renamed[k]] = v
            else:
                out[k] = v
        return out, renamed

    def explain(self, kind, key, checkpoint_shape=None, model_shape=None):
        if key.startswith("fc."):
            return "the classifier: the detection backbone has none"
        if kind == "mismatched" and ".lstm." in key:
            return ("the DSU bottleneck of the ImageNet model is C // 16, the detection backbone's C // 20 (official "
                    "ResNet_dlal); it cannot be loaded and keeps its init")
        if re.match(r"^layer\d\.extict\.weight$", key):
            return ("the ImageNet model's name of the stage's depth-wise conv, 'excite' in the detection backbone "
                    "(python -m dla.tools.convert_to_det renames it)")
        if kind == "missing" and re.match(r"^layer\d\.excite\.weight$", key):
            return ("called 'extict' in ImageNet checkpoints, not loaded under that name (python -m "
                    "dla.tools.convert_to_det renames it)")
        return super().explain(kind, key, checkpoint_shape, model_shape)
