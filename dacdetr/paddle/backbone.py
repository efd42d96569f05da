"""Backbone of the Paddle port: a bottleneck ResNet (torchvision layout: stride in the 3x3 conv) with
frozen BatchNorm, returning layer2/3/4 with their padding masks, joined with the sine position encoding.

Parameter names follow the PyTorch model (``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}``,
``bn{1-3}``, ``downsample.{0,1}``); frozen BatchNorm keeps Paddle's buffer names ``_mean`` /
``_variance`` next to ``weight`` / ``bias``.
"""
from __future__ import annotations

import logging
import math
import os

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .ops import NestedTensor

__all__ = ["FrozenBatchNorm2D", "ResNet", "Backbone", "PositionEmbeddingSine", "Joiner", "build_backbone",
           "RESNET_INIT_PATH"]

logger = logging.getLogger(__name__)

RESNET_INIT_PATH = "./initmodel/resnet50-19c8e357.pth"
_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


class FrozenBatchNorm2D(nn.Layer):
    """BatchNorm with fixed statistics and affine terms (buffers, never trained):
    ``y = x * scale + (bias - mean * scale)``, ``scale = weight / sqrt(variance + eps)``."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", paddle.ones([num_features]))
        self.register_buffer("bias", paddle.zeros([num_features]))
        self.register_buffer("_mean", paddle.zeros([num_features]))
        self.register_buffer("_variance", paddle.ones([num_features]))

    def forward(self, x):
        scale = self.weight.reshape([1, -1, 1, 1]) * paddle.rsqrt(self._variance.reshape([1, -1, 1, 1]) + self.eps)
        shift = self.bias.reshape([1, -1, 1, 1]) - self._mean.reshape([1, -1, 1, 1]) * scale
        return x * scale + shift


def _conv(cin, cout, k, stride=1, padding=0, dilation=1):
    fan_out = cout * k * k  # Kaiming normal (fan_out, relu), as torchvision initialises ResNets
    init = nn.initializer.Normal(0.0, math.sqrt(2.0 / fan_out))
    return nn.Conv2D(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias_attr=False,
                     weight_attr=paddle.ParamAttr(initializer=init))


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv(cin, planes, 1)
        self.bn1 = FrozenBatchNorm2D(planes)
        self.conv2 = _conv(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation)
        self.bn2 = FrozenBatchNorm2D(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = FrozenBatchNorm2D(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Layer):
    """Stem + four bottleneck stages; ``forward`` returns the outputs of ``return_layers`` by name."""

    def __init__(self, depth="resnet50", dilation=False, return_layers=("layer2", "layer3", "layer4")):
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"backbone {depth!r} is not a bottleneck ResNet (resnet50/101/152)")
        self.return_layers = tuple(return_layers)
        self.conv1 = _conv(3, 64, 7, stride=2, padding=3)
        self.bn1 = FrozenBatchNorm2D(64)
        self._cin, self._dilation = 64, 1
        blocks = _DEPTHS[depth]
        self.layer1 = self._stage(64, blocks[0], 1)
        self.layer2 = self._stage(128, blocks[1], 2)
        self.layer3 = self._stage(256, blocks[2], 2)
        self.layer4 = self._stage(512, blocks[3], 2, dilate=dilation)

    def _stage(self, planes, n, stride, dilate=False):
        prev_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        down = None
        if stride != 1 or self._cin != planes * 4:
            down = nn.Sequential(_conv(self._cin, planes * 4, 1, stride=stride), FrozenBatchNorm2D(planes * 4))
        layers = [Bottleneck(self._cin, planes, stride, down, prev_dilation)]
        self._cin = planes * 4
        layers += [Bottleneck(self._cin, planes, dilation=self._dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        out = {}
        for i, name in enumerate(("layer1", "layer2", "layer3", "layer4")):
            x = getattr(self, name)(x)
            if name in self.return_layers:
                out[str(self.return_layers.index(name))] = x
        return out


def _masks_for(features, mask):
    out = []
    for name in sorted(features):
        x = features[name]
        m = F.interpolate(mask[None].astype("float32"), size=x.shape[-2:], mode="nearest").astype("bool")[0]
        out.append(NestedTensor(x, m))
    return out


class Backbone(nn.Layer):
    """ResNet with frozen stem + layer1 (all frozen when ``train_backbone`` is False)."""

    def __init__(self, name, train_backbone, return_interm_layers, dilation, pretrained_path=RESNET_INIT_PATH):
        super().__init__()
        layers = ("layer2", "layer3", "layer4") if return_interm_layers else ("layer4",)
        self.body = ResNet(name, dilation, layers)
        if pretrained_path and os.path.isfile(pretrained_path):
            from .convert import load_torch_file, torch_to_paddle

            state = torch_to_paddle(load_torch_file(pretrained_path), prefix="")
            missing = [k for k in self.body.state_dict() if k not in state]
            self.body.set_state_dict({k: v for k, v in state.items() if k in self.body.state_dict()})
            logger.info("backbone weights %s: %d missing, %d unused keys", pretrained_path, len(missing),
                        len([k for k in state if k not in self.body.state_dict()]))
        elif pretrained_path:
            logger.warning("backbone weights %s not found: %s keeps its random initialisation", pretrained_path, name)
        for pname, p in self.body.named_parameters():
            trainable = train_backbone and any(s in pname for s in ("layer2", "layer3", "layer4"))
            p.stop_gradient = not trainable
        self.strides = [8, 16, 32] if return_interm_layers else [32]
        self.num_channels = [512, 1024, 2048] if return_interm_layers else [2048]
        if dilation:
            self.strides[-1] //= 2

    def forward(self, tensor_list: NestedTensor):
        if tensor_list.mask is None:
            raise ValueError("the backbone needs a padding mask")
        return _masks_for(self.body(tensor_list.tensors), tensor_list.mask)


class PositionEmbeddingSine(nn.Layer):
    """Sine/cosine encoding of the normalised row (first half) and column (second half) index of
    unpadded pixels, (B, 2 * num_pos_feats, H, W), evaluated in float32 whatever the model dtype."""

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=None):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, tensor_list: NestedTensor):
        valid = paddle.logical_not(tensor_list.mask).astype("float32")
        y = paddle.cumsum(valid, axis=1)
        x = paddle.cumsum(valid, axis=2)
        if self.normalize:
            y = (y - 0.5) / (y[:, -1:, :] + 1e-6) * self.scale
            x = (x - 0.5) / (x[:, :, -1:] + 1e-6) * self.scale
        i = paddle.arange(self.num_pos_feats, dtype="float32")
        freq = self.temperature ** (2 * paddle.floor(i / 2) / self.num_pos_feats)
        px, py = x[:, :, :, None] / freq, y[:, :, :, None] / freq
        px = paddle.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], axis=4).flatten(3)
        py = paddle.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], axis=4).flatten(3)
        return paddle.concat([py, px], axis=3).transpose([0, 3, 1, 2])


class Joiner(nn.Layer):
    """``backbone`` (child "0") + position encoding (child "1", no parameters)."""

    def __init__(self, backbone, position_embedding):
        super().__init__()
        self.add_sublayer("0", backbone)
        self.add_sublayer("1", position_embedding)
        self.strides = backbone.strides
        self.num_channels = backbone.num_channels

    def __getitem__(self, i):
        return self._sub_layers[str(i)]

    def forward(self, tensor_list: NestedTensor):
        out = self[0](tensor_list)
        pos = [self[1](x).astype(x.tensors.dtype) for x in out]
        return out, pos


def build_backbone(args):
    if getattr(args, "position_embedding", "sine") != "sine":
        raise NotImplementedError("the Paddle port has the sine position encoding only")
    if "resnet" not in args.backbone:
        raise NotImplementedError(f"the Paddle port has ResNet backbones only, not {args.backbone!r}")
    path = getattr(args, "pretrained_backbone_path", None)
    if not (path and os.path.isfile(path) and "swin" not in os.path.basename(path).lower()):
        path = RESNET_INIT_PATH
    body = Backbone(args.backbone, args.lr_backbone > 0, args.num_feature_levels > 1,
                    getattr(args, "dilation", False), pretrained_path=path)
    return Joiner(body, PositionEmbeddingSine(args.hidden_dim // 2, normalize=True))
