"""Normalisation layers shared by the papers.

``FrozenBatchNorm2d`` is torchvision's (``torchvision.ops.misc.FrozenBatchNorm2d``), re-exported.
It is identical, operation for operation, to the copy in Deformable-DETR / DAC-DETR that the
project carried before:

* buffers ``weight``, ``bias``, ``running_mean``, ``running_var`` (no parameters, no
  ``num_batches_tracked``), initialised to 1 / 0 / 0 / 1;
* ``eps=1e-5`` by default, added to ``running_var`` inside the square root;
* forward ``scale = weight * rsqrt(running_var + eps)``, ``shift = bias - running_mean * scale``,
  ``y = x * scale + shift``, with the per-channel vectors reshaped to ``(1, C, 1, 1)`` first;
* loading drops a ``num_batches_tracked`` entry from the state dict (BatchNorm2d checkpoints load
  with ``strict=True``).

The only differences are cosmetic (``repr``, torchvision's API-usage log call), so DAC-DETR's
float64 official-output tests are bit-exact with it.
"""
from __future__ import annotations

from torchvision.ops.misc import FrozenBatchNorm2d

__all__ = ["FrozenBatchNorm2d"]
