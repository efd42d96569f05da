"""Channel attention shared by the papers: squeeze-and-excitation and ECA.

One :class:`SEModule` and one :class:`ECAModule` serve every model; constructor arguments give
each official code base its own state_dict layout (keys are relative to the module):

=========================================  ==========================  =============================
official model                             construction                keys (C channels, r = 16)
=========================================  ==========================  =============================
DLA CIFAR ``senet``; DLA ImageNet          ``SEModule(C)``             ``fc.0.weight (C/r, C)``,
``resnet*_se`` / ``resnext*_se``;                                      ``fc.2.weight (C, C/r)``
RLA-Net ``*_se`` (attribute ``se``)
DLA ImageNet ``senet_50`` (torchvision     ``SEModule(C,               ``se.1.weight (C/r, C, 1, 1)``,
ResNet-50 + conv SE, attribute ``se``)     layout="conv")``            ``se.3.weight (C, C/r, 1, 1)``
DLA CIFAR ``ecanet`` (adaptive k);         ``ECAModule(C)`` or         ``conv.weight (1, 1, k)``
DLA / RLA-Net ImageNet ``*_eca``           ``ECAModule(k_size=k)``
(``k_size=[5, 5, 5, 7]`` by stage);
RLA-Net MobileNetV2 ECA (k = 1 if C < 96
else 3, at ``conv.3``)
=========================================  ==========================  =============================

No official SE here has biases; ``bias=True`` is available for other layouts. The two SE layouts
compute the same function (the 1x1 convs are the linear layers applied to a 1x1 map); they differ
only in module names and weight shapes, which is what a checkpoint needs.

Deviations: none in the math. Global average pooling is ``adaptive_avg_pool2d(x, 1)`` as in the
official SE code; ECA inherits timm's ``EcaModule.forward`` (``x.mean((2, 3))``), which equals the
official ``AdaptiveAvgPool2d(1)`` up to float rounding (about 1e-16 relative in float64).
"""
from __future__ import annotations

import math

import torch.nn.functional as F
from timm.layers import EcaModule
from torch import nn

__all__ = ["SEModule", "ECAModule", "eca_kernel_size"]


class SEModule(nn.Module):
    """Squeeze-and-excitation (Hu et al.): ``x * sigmoid(W2 relu(W1 GAP(x)))`` per channel.

    Args:
        channels: C, the input (and output) channels.
        reduction: r; the bottleneck has ``channels // reduction`` units (16 in DLA and RLA-Net).
        layout: ``"linear"`` -- ``nn.Linear`` layers in a Sequential ``[Linear, ReLU, Linear,
            Sigmoid]`` (keys ``<name>.0.weight``, ``<name>.2.weight``); ``"conv"`` -- 1x1
            ``nn.Conv2d`` layers in a Sequential ``[AdaptiveAvgPool2d(1), Conv2d, ReLU, Conv2d,
            Sigmoid]`` (keys ``<name>.1.weight``, ``<name>.3.weight``).
        name: attribute of that Sequential; default ``"fc"`` for ``"linear"``, ``"se"`` for ``"conv"``.
        bias: biases on both layers (False in every official model here).
        rd_channels: bottleneck width, overriding ``channels // reduction``.
    """

    def __init__(self, channels: int, reduction: int = 16, layout: str = "linear", name: str | None = None,
                 bias: bool = False, rd_channels: int | None = None):
        super().__init__()
        if layout not in ("linear", "conv"):
            raise ValueError(f"SEModule layout must be 'linear' or 'conv', got {layout!r}")
        rd = rd_channels if rd_channels is not None else channels // reduction
        if rd < 1:
            raise ValueError(f"SEModule: {channels} channels are too few for reduction {reduction}")
        self.channels = channels
        self.rd_channels = rd
        self.layout = layout
        self.name = name or ("fc" if layout == "linear" else "se")
        if layout == "linear":
            seq = nn.Sequential(nn.Linear(channels, rd, bias=bias), nn.ReLU(inplace=True),
                                nn.Linear(rd, channels, bias=bias), nn.Sigmoid())
        else:
            seq = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, rd, 1, bias=bias),
                                nn.ReLU(inplace=True), nn.Conv2d(rd, channels, 1, bias=bias), nn.Sigmoid())
        self.add_module(self.name, seq)

    def forward(self, x):
        seq = getattr(self, self.name)
        if self.layout == "conv":
            return x * seq(x)
        b, c = x.shape[:2]
        y = seq(F.adaptive_avg_pool2d(x, 1).view(b, c)).view(b, c, 1, 1)
        return x * y

    def extra_repr(self):
        return f"channels={self.channels}, rd_channels={self.rd_channels}, layout={self.layout!r}"


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA-Net's adaptive kernel: ``t = int(|(log2 C + b) / gamma|)``, ``k = t`` if odd else ``t + 1``.

    C = 64 -> 3; 128, 256, 512, 1024 -> 5; 2048 -> 7 (also the kernel of DLA's layer-attention
    Conv1d). Unlike timm's ``EcaModule`` no lower bound of 3 is applied.
    """
    if channels < 1:
        raise ValueError(f"eca_kernel_size: channels must be positive, got {channels}")
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECAModule(EcaModule):
    """Efficient channel attention (Wang et al.): ``x * sigmoid(Conv1d_k(GAP(x)))``, the 1-D
    convolution running over the channel axis (one input and output channel, zero padding
    ``(k - 1) // 2``, no bias). Key: ``conv.weight`` of shape ``(1, 1, k)``.

    timm's ``EcaModule`` with the official kernel rule: give ``k_size`` (the official
    ``eca_layer(channel, k_size)``; RLA-Net's MobileNet uses k = 1) or only ``channels`` for the
    adaptive size :func:`eca_kernel_size`.
    """

    def __init__(self, channels: int | None = None, k_size: int | None = None, gamma: float = 2, b: float = 1):
        if k_size is None:
            if channels is None:
                raise ValueError("ECAModule needs k_size or channels (for the adaptive kernel size)")
            k_size = eca_kernel_size(channels, gamma, b)
        if k_size < 1 or k_size % 2 == 0:
            raise ValueError(f"ECAModule: k_size must be a positive odd number, got {k_size}")
        super().__init__(channels=None, kernel_size=k_size)
        self.channels = channels
        self.k_size = k_size

    def extra_repr(self):
        return f"channels={self.channels}, k_size={self.k_size}"
