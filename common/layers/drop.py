"""Stochastic depth, shared by every model of the project.

The modules are timm's (``timm.layers.DropPath`` / ``drop_path``), re-exported so that papers
import them from one place. timm's version is also the one the official Swin, DWNet and DLA code
use: per-sample Bernoulli mask on the batch dimension, kept samples scaled by ``1 / (1 - p)``,
identity in eval mode or at ``p == 0``. The rate lives in ``drop_prob``, which is what
:func:`common.engine.set_drop_path` sets. ``DropPath`` has no parameters or buffers, so using it
never changes a state_dict.
"""
from __future__ import annotations

from timm.layers import DropPath, drop_path
from torch import nn

__all__ = ["DropPath", "drop_path", "drop_path_or_identity"]


def drop_path_or_identity(rate: float) -> nn.Module:
    """``DropPath(rate)`` if ``rate > 0`` else ``nn.Identity()`` (the Swin / DWNet convention: a
    block whose scheduled rate is 0 gets no DropPath module at all)."""
    return DropPath(rate) if rate > 0.0 else nn.Identity()
