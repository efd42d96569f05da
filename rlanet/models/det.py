"""The detection backbone of RLA-Net: ``RLA_ResNet`` (official ``mmdetection/resnet_rla.py``), in plain PyTorch,
on the classification model's blocks and recurrence (:class:`rlanet.models.resnet_rla.RLAResNet`).

``RLA_ResNet(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')`` (``ECA=[5, 5, 5, 7]`` for
ECA-RLA) returns ``x`` after each stage (256 / 512 / 1024 / 2048 channels at strides 4 / 8 / 16 / 32); the
recurrent state ``h`` runs beside the stages and is not output. Keys: the classification model's without
``bn2`` and ``fc`` (``conv1, bn1, conv_outs, recurrent_convs, stages, stage_bns``), so a classification
checkpoint fills every key (the report lists the unused ``bn2`` / ``fc``). ``num_classes`` and ``style`` are
accepted and unused, as officially; ``norm_layer`` must be None or BatchNorm2d (the official blocks build
BatchNorm2d whatever it is).

``frozen_stages``: the stem when ``>= 0``, and stage ``i < frozen_stages`` with its ``stage_bns[i]``,
``conv_outs[i]`` and ``recurrent_convs[i]``. Init (``init_weights()``): without a checkpoint the classification
model's (Kaiming-normal fan_out convs, BN 1 / 0, ``bn3`` = 0 with ``zero_init_last_bn``; officially this branch
raises NameError, its helpers never being imported); with ``pretrained`` the checkpoint is loaded non-strictly
and reported.
"""
import torch.nn as nn

from common.backbone import DetectionBackbone
from common.layers.init import init_resnet_

from ._registry import StageFeatures
from .resnet_rla import RLABottleneck, RLAResNet

__all__ = ["RLA_ResNet"]


class RLA_ResNet(DetectionBackbone, StageFeatures):  # noqa: N801 (the official class name)
    """Official arguments (``block`` must be the RLA bottleneck, the only block of the official file)."""

    def __init__(self, block=RLABottleneck, layers=(3, 4, 6, 3), num_classes=1000, rla_channel=32, SE=False,
                 ECA=None, frozen_stages=-1, norm_eval=True, style="pytorch", zero_init_last_bn=True, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, norm_layer=None, pretrained=None,
                 init_cfg=None):
        if block is not RLABottleneck and block not in ("RLA_Bottleneck", "RLABottleneck"):
            raise ValueError(f"RLA_ResNet: block must be the RLA bottleneck, got {block!r}")
        if norm_layer not in (None, nn.BatchNorm2d):
            raise ValueError(f"RLA_ResNet: norm_layer must be None or nn.BatchNorm2d (the official blocks use "
                             f"BatchNorm2d), got {norm_layer!r}")
        trunk = RLAResNet(layers, num_classes=0, rla_channel=rla_channel, SE=SE, ECA=ECA,
                          zero_init_last_bn=zero_init_last_bn, groups=groups, width_per_group=width_per_group,
                          replace_stride_with_dilation=replace_stride_with_dilation)
        StageFeatures.__init__(self, trunk, (0, 1, 2, 3))
        self.setup_backbone(frozen_stages, norm_eval, pretrained, init_cfg)
        self.style, self.num_classes = style, num_classes
        self.zero_init_last_bn = bool(zero_init_last_bn)
        self.out_channels = [info["num_chs"] for info in trunk.feature_info]
        self._freeze_stages()

    def forward(self, x):
        return tuple(StageFeatures.forward(self, x))

    # -- DetectionBackbone --------------------------------------------------------------------------
    def frozen_modules(self):
        mods = [self.conv1, self.bn1] if self.frozen_stages >= 0 else []
        for i in range(min(self.frozen_stages, len(self.stages))):
            mods += [self.stages[i], self.stage_bns[i], self.conv_outs[i], self.recurrent_convs[i]]
        return mods

    def official_init_(self):
        init_resnet_(self, self.zero_init_last_bn, RLABottleneck)

    def explain(self, kind, key, checkpoint_shape=None, model_shape=None):
        if key.startswith("fc."):
            return "the classifier: the detection backbone has none"
        if key.startswith("bn2."):
            return "the classification head's BatchNorm of the recurrent state h (the detection backbone outputs no h)"
        return super().explain(kind, key, checkpoint_shape, model_shape)
