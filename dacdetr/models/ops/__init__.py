"""Multi-scale deformable attention (MSDeformAttn) core op.

``ms_deform_attn`` is a ``torch.library`` custom op, ``torch.ops.layerzoo.ms_deform_attn``, with a fake
(meta) implementation and a registered backward, so ``torch.compile(fullgraph=True)`` traces through it
as one opaque node. Its implementation picks:

* CUDA tensors in float16 / bfloat16 / float32 with Triton installed -> the fused
  Triton kernel (forward and backward), see :mod:`.triton_msda`;
* everything else (CPU tensors, float64, no Triton) -> the pure-PyTorch
  reference :func:`ms_deform_attn_core_pytorch` (grid_sample based), its backward by autograd
  through the reference.

The environment variable ``LAYERZOO_MSDA`` overrides the choice: ``pytorch``
always uses the reference, ``triton`` always uses the kernel (on CPU tensors
this only works under Triton's interpreter, ``TRITON_INTERPRET=1``).

The level sizes are part of the op's *schema* (a flat ``int[]`` ``[H_0, W_0, H_1, W_1, ...]``), not a
tensor: under ``torch.compile`` / ``torch.export`` they are Python integers, so no host sync is needed
to read them. Callers may still pass the official ``(L, 2)`` long tensor in eager mode (it is read once
with ``.tolist()``); compiled and exported models pass ``(H, W)`` integer pairs (see
:func:`level_sizes`). While ``torch.export`` traces (``torch.onnx.export(..., dynamo=True)``) the op is
decomposed into the reference (``grid_sample`` and elementwise ops), which every exporter translates.
"""
from __future__ import annotations

import functools
import os
from typing import List, Sequence, Tuple, Union

import torch

from .reference import ms_deform_attn_backward_pytorch, ms_deform_attn_core_pytorch

__all__ = ["ms_deform_attn", "ms_deform_attn_core_pytorch", "has_triton_kernel", "select_backend",
           "level_sizes", "level_start_index"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_ENV_VAR = "LAYERZOO_MSDA"

Shapes = Union[torch.Tensor, Sequence[Sequence[int]]]


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


def level_sizes(spatial_shapes: Shapes) -> Tuple[Tuple[int, int], ...]:
    """``((H_0, W_0), ...)`` as Python integers from an ``(L, 2)`` tensor (one host read) or a sequence of pairs
    (returned as is: integers, or symbolic integers under ``torch.compile``)."""
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return tuple((h, w) for h, w in spatial_shapes)


def level_start_index(spatial_shapes: Shapes, device=None) -> torch.Tensor:
    """``(L,)`` long offsets of each level in the flattened ``S`` axis."""
    starts, total = [], 0
    for h, w in level_sizes(spatial_shapes):
        starts.append(total)
        total = total + h * w
    return torch.tensor(starts, dtype=torch.long, device=device)


def _pairs(flat: Sequence[int]) -> List[Tuple[int, int]]:
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


@functools.lru_cache(maxsize=64)
def _shape_tensors(flat: Tuple[int, ...], device: str):
    """(L, 2) sizes and (L,) starts on ``device`` for the Triton kernel (cached: no copy per call)."""
    pairs = _pairs(flat)
    shapes = torch.tensor(pairs, dtype=torch.long, device=device)
    return shapes, level_start_index(pairs, device=device)


def _check_flat(spatial_shapes: Sequence[int], sampling_locations: torch.Tensor):
    if len(spatial_shapes) != 2 * sampling_locations.shape[3]:
        raise ValueError(f"spatial_shapes has {len(spatial_shapes) // 2} levels but sampling_locations has "
                         f"{sampling_locations.shape[3]}")


# ------------------------------------------------------------------------------------------------ the op
@torch.library.custom_op("layerzoo::ms_deform_attn", mutates_args=())
def _msda_op(value: torch.Tensor, spatial_shapes: List[int], sampling_locations: torch.Tensor,
             attention_weights: torch.Tensor) -> torch.Tensor:
    _check_flat(spatial_shapes, sampling_locations)
    if select_backend(value) == "triton":
        shapes, starts = _shape_tensors(tuple(spatial_shapes), str(value.device))
        return _triton_module().msda_forward(value, shapes, starts, sampling_locations, attention_weights)
    return ms_deform_attn_core_pytorch(value, _pairs(spatial_shapes), sampling_locations, attention_weights)


@_msda_op.register_fake
def _msda_fake(value, spatial_shapes, sampling_locations, attention_weights):
    batch, _, heads, channels = value.shape
    return value.new_empty((batch, sampling_locations.shape[1], heads * channels))


@torch.library.custom_op("layerzoo::ms_deform_attn_backward", mutates_args=())
def _msda_backward_op(value: torch.Tensor, spatial_shapes: List[int], sampling_locations: torch.Tensor,
                      attention_weights: torch.Tensor, grad_output: torch.Tensor,
                      needs_value: bool, needs_loc: bool, needs_attn: bool
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. (value, sampling_locations, attention_weights); an empty tensor for each one not asked."""
    if select_backend(value) == "triton":
        shapes, starts = _shape_tensors(tuple(spatial_shapes), str(value.device))
        grads = _triton_module().msda_backward(value, shapes, starts, sampling_locations, attention_weights,
                                               grad_output, needs_value=needs_value, needs_loc=needs_loc,
                                               needs_attn=needs_attn)
    else:
        grads = ms_deform_attn_backward_pytorch(value, _pairs(spatial_shapes), sampling_locations,
                                                attention_weights, grad_output, (needs_value, needs_loc, needs_attn))
    return tuple(g if g is not None else t.new_empty(0)
                 for g, t in zip(grads, (value, sampling_locations, attention_weights)))


@_msda_backward_op.register_fake
def _msda_backward_fake(value, spatial_shapes, sampling_locations, attention_weights, grad_output,
                        needs_value, needs_loc, needs_attn):
    return tuple(torch.empty_like(t) if f else t.new_empty(0)
                 for t, f in zip((value, sampling_locations, attention_weights),
                                 (needs_value, needs_loc, needs_attn)))


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, sampling_locations, attention_weights = inputs
    ctx.spatial_shapes = spatial_shapes
    ctx.save_for_backward(value, sampling_locations, attention_weights)


def _backward(ctx, grad_output):
    value, loc, attn = ctx.saved_tensors
    needs_value, _, needs_loc, needs_attn = ctx.needs_input_grad
    g_value, g_loc, g_attn = _msda_backward_op(value, ctx.spatial_shapes, loc, attn, grad_output.contiguous(),
                                               needs_value, needs_loc, needs_attn)
    return (g_value if needs_value else None, None, g_loc if needs_loc else None,
            g_attn if needs_attn else None)


_msda_op.register_autograd(_backward, setup_context=_setup_context)


def ms_deform_attn(value: torch.Tensor,
                   spatial_shapes: Shapes,
                   level_start_index: torch.Tensor,
                   sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor,
                   im2col_step: int = 64) -> torch.Tensor:
    """Multi-scale deformable attention core.

    Args:
        value: ``(B, S, M, D)``.
        spatial_shapes: ``(L, 2)`` long tensor, or a sequence of ``(H_l, W_l)`` integer pairs (the form
            ``torch.compile`` / ``torch.export`` need).
        level_start_index: ``(L,)`` long, offset of each level in ``S`` (implied by the sizes; kept for the
            official signature).
        sampling_locations: ``(B, Lq, M, L, P, 2)`` normalised ``(x, y)``.
        attention_weights: ``(B, Lq, M, L, P)``.
        im2col_step: kept for signature compatibility with the official CUDA op
            (its batching granularity); it does not change the result.

    Returns:
        ``(B, Lq, M * D)``.
    """
    sizes = level_sizes(spatial_shapes)
    if torch.compiler.is_exporting():
        # export: decompose into the reference's standard ops (grid_sample etc.)
        return ms_deform_attn_core_pytorch(value, sizes, sampling_locations, attention_weights)
    flat = [x for hw in sizes for x in hw]
    return _msda_op(value, flat, sampling_locations, attention_weights)
