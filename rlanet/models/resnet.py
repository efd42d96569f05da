"""The baselines of the official registry: ``ResNet`` (``models/resnet.py``: ResNet / ResNeXt with optional
SE or ECA) and ``ResNet_k`` (``models/resnet_k.py``: planes widened by ``channel_k / 4``, the "same extra
channels as RLA" control). torchvision's layout (``conv1, bn1, layer1..4, fc``) with ``se.fc.*`` /
``eca.conv.*`` after ``downsample`` in a block. A plain chain of children: the contract's own trunk,
``features_only`` and grad checkpointing apply unchanged."""
import torch.nn as nn

from common.layers.attention import ECAModule, SEModule
from common.models import ClassifierModel

from ._registry import REGISTRY, conv1x1, conv3x3

__all__ = ["Bottleneck", "ResNet", "ResNet_k"]


class Bottleneck(nn.Module):
    """The official ``Bottleneck`` (torchvision's, + SE then ECA on the branch before the add)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, SE=False, ECA_size=None, groups=1,
                 base_width=64, dilation=1, reduction=16):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.se = SEModule(out, reduction) if SE else None
        self.eca = ECAModule(k_size=int(ECA_size)) if ECA_size is not None else None

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.eca is not None:
            out = self.eca(out)
        out += identity
        return self.relu(out)


class ResNetBase(ClassifierModel):
    """``ResNet(block, layers, num_classes, SE, ECA, zero_init_last_bn, groups, width_per_group)``;
    ``add_k`` widens every stage's planes (``ResNet_k``: ``channel_k // 4``)."""

    stage_names = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, SE=False, ECA=None, zero_init_last_bn=True,
                 groups=1, width_per_group=64, replace_stride_with_dilation=None, add_k=0, *, k_size=None,
                 in_chans=3, global_pool="avg", drop_rate=0.0):
        super().__init__()
        if k_size is not None:
            if ECA is not None:
                raise ValueError("ResNet: give the ECA kernel sizes once (ECA= or k_size=), not both")
            ECA = k_size
        ECA = [None] * 4 if ECA is None else list(ECA)
        if len(ECA) != 4 or len(layers) != 4:
            raise ValueError(f"ResNet: layers and ECA need 4 entries, got layers={layers}, ECA={ECA}")
        dilate = list(replace_stride_with_dilation or [False] * 3)
        self.groups, self.base_width = groups, width_per_group
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = [64 * 2 ** i + add_k for i in range(4)]
        for i in range(4):
            setattr(self, f"layer{i + 1}", self._make_layer(planes[i], layers[i], SE, ECA[i], 1 if i == 0 else 2,
                                                            dilate[i - 1] if i else False))
        chs = [p * Bottleneck.expansion for p in planes]
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"layer{i + 1}") for i, c in enumerate(chs)]
        self.init_head(chs[-1], num_classes, global_pool, drop_rate)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(mod.weight, 1)
                nn.init.constant_(mod.bias, 0)
        if zero_init_last_bn:
            for mod in self.modules():
                if isinstance(mod, Bottleneck):
                    nn.init.constant_(mod.bn3.weight, 0)

    def _make_layer(self, planes, blocks, SE, ECA_size, stride, dilate):
        out = planes * Bottleneck.expansion
        prev_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        kw = dict(SE=SE, ECA_size=ECA_size, groups=self.groups, base_width=self.base_width)
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, dilation=prev_dilation, **kw)]
        self.inplanes = out
        layers += [Bottleneck(out, planes, dilation=self.dilation, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


@REGISTRY.register("ResNet")
def ResNet(layers=(3, 4, 6, 3), num_classes=1000, SE=False, ECA=None, zero_init_last_bn=True, groups=1,
           width_per_group=64, *, k_size=None, in_chans=3, global_pool="avg", drop_rate=0.0):
    """The official baseline ResNet / ResNeXt (``resnet50``, ``resnext50_32x4d_se``, ...)."""
    return ResNetBase(layers, num_classes, SE, ECA, zero_init_last_bn, groups, width_per_group, k_size=k_size,
                      in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)


@REGISTRY.register("ResNet_k")
def ResNet_k(layers=(3, 4, 6, 3), num_classes=1000, SE=False, ECA=None, channel_k=32, zero_init_last_bn=True,
             groups=1, width_per_group=64, *, in_chans=3, global_pool="avg", drop_rate=0.0):
    """``resnet50_k``: a plain ResNet whose planes are widened by ``int(channel_k / 4)`` (8 for k = 32)."""
    return ResNetBase(layers, num_classes, SE, ECA, zero_init_last_bn, groups, width_per_group,
                      add_k=int(channel_k / Bottleneck.expansion), in_chans=in_chans, global_pool=global_pool,
                      drop_rate=drop_rate)
