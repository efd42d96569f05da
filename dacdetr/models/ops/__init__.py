"""Multi-scale deformable attention (MSDeformAttn) core op.

``ms_deform_attn`` picks an implementation:

* CUDA tensors in float16 / bfloat16 / float32 with Triton installed -> the fused
  Triton kernel (forward and backward), see :mod:`.triton_msda`;
* everything else (CPU tensors, float64, no Triton) -> the pure-PyTorch
  reference :func:`ms_deform_attn_core_pytorch` (grid_sample based).

The environment variable ``LAYERZOO_MSDA`` overrides the choice: ``pytorch``
always uses the reference, ``triton`` always uses the kernel (on CPU tensors
this only works under Triton's interpreter, ``TRITON_INTERPRET=1``).
"""
from __future__ import annotations

import functools
import os

import torch

from .reference import ms_deform_attn_core_pytorch

__all__ = ["ms_deform_attn", "ms_deform_attn_core_pytorch", "has_triton_kernel", "select_backend"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ENV_VAR = "LAYERZOO_MSDA"


@functools.lru_cache(maxsize=None)
def _triton_module():
    try:
        from . import triton_msda
    except Exception:  # triton missing or broken: fall back to the reference
        return None
    return triton_msda


def has_triton_kernel() -> bool:
    """True when the Triton kernel can be imported (Triton installed)."""
    return _triton_module() is not None


def select_backend(value: torch.Tensor) -> str:
    """Name of the implementation ``ms_deform_attn`` uses for ``value``: 'triton' or 'pytorch'."""
    forced = os.environ.get(_ENV_VAR, "").strip().lower()
    if forced not in ("", "auto", "pytorch", "triton"):
        raise ValueError(f"{_ENV_VAR} must be 'pytorch' or 'triton' (or unset), got {forced!r}")
    if forced == "pytorch":
        return "pytorch"
    if forced == "triton":
        if not has_triton_kernel():
            raise RuntimeError(f"{_ENV_VAR}=triton but the Triton kernel is unavailable (is triton installed?)")
        return "triton"
    if value.is_cuda and value.dtype in _KERNEL_DTYPES and has_triton_kernel():
        return "triton"
    return "pytorch"


def ms_deform_attn(value: torch.Tensor,
                   spatial_shapes: torch.Tensor,
                   level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor,
                   im2col_step: int = 64) -> torch.Tensor:
    """Multi-scale deformable attention core.

    Args:
        value: ``(B, S, M, D)``.
        spatial_shapes: ``(L, 2)`` long, ``[H_l, W_l]`` per level.
        level_start_index: ``(L,)`` long, offset of each level in ``S``.
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalised ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)``.
        im2col_step: kept for signature compatibility with the official CUDA op
            (its batching granularity); it does not change the result.

    Returns:
        ``(B, Lq, M * D)``.
    """
    if select_backend(value) == "triton":
        return _triton_module().ms_deform_attn_triton(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    return ms_deform_attn_core_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
