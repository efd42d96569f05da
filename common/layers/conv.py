"""Convolutions with a faster CPU path and the same parameters, keys and numbers as ``nn.Conv2d``.

:class:`DepthwiseConv2d` is an ``nn.Conv2d`` with ``groups == in_channels == out_channels``. On CPU, oneDNN's
depth-wise kernels are several times faster on a channels_last input than on an NCHW one (float32, forward
and backward: a 3x3 over ``(8, 256, 56, 56)`` takes ~0.5 s in NCHW and ~0.17 s in channels_last on one
core), so a float32 NCHW input on CPU is laid out channels_last before the convolution; the output then
stays channels_last (the values, the shape and the autograd graph are those of ``nn.Conv2d``; only the
strides differ). Other devices, dtypes and layouts run ``nn.Conv2d`` unchanged.
:func:`cpu_channels_last_enabled` switches the layout change off (the reference path, for tests and timing).
"""
import contextlib

import torch
import torch.nn as nn

__all__ = ["DepthwiseConv2d", "cpu_channels_last", "cpu_channels_last_enabled"]

_ENABLED = True


@contextlib.contextmanager
def cpu_channels_last_enabled(enabled):
    """Within the block, :func:`cpu_channels_last` changes layouts only if ``enabled``."""
    global _ENABLED
    before, _ENABLED = _ENABLED, bool(enabled)
    try:
        yield
    finally:
        _ENABLED = before


def cpu_channels_last(x):
    """``x`` laid out channels_last when it is a 4-d float32 CPU tensor in another layout, else ``x``."""
    if (_ENABLED and x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
            and not x.is_contiguous(memory_format=torch.channels_last)):
        return x.contiguous(memory_format=torch.channels_last)
    return x


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, groups=channels, ...)`` (keys ``weight`` / ``bias``), with
    the CPU layout choice of this module's docstring."""

    def __init__(self, channels, kernel_size, stride=1, padding=0, dilation=1, bias=True, **kwargs):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=channels, bias=bias, **kwargs)

    def forward(self, x):
        return super().forward(cpu_channels_last(x))
