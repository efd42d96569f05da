"""The two input-conditioned depth-wise convolutions of DWNet, in plain PyTorch (CPU and GPU, any float dtype).

* :func:`dynamic_dwconv` -- one ``k x k`` kernel per (image, channel), shared over positions (D-DWNet's
  ``DynamicDWConv``): a grouped convolution with ``B * C`` groups, as the official code computes it.
* :func:`idynamic_dwconv` -- one ``k x k`` kernel per (image, channel group, position) (I-D-DWNet's
  ``IDynamicDWConv``, an involution-style op; the official code runs it as a cupy CUDA kernel, CUDA only,
  float32 / float64 only). Here it is ``k * k`` shifted-slice multiply-accumulates over the zero-padded input
  with a hand-written backward (:class:`IDynamicDWConvFn`): memory is one padded copy of the input, never
  the ``k * k``-times unfolded tensor. Half / bfloat16 inputs accumulate in float32.

``idynamic_dwconv`` semantics (as the CUDA kernel)::

    out[b, c, y, x] = sum_{i, j} weight[b, c // (C // G), i, j, y, x] * x_pad[b, c, y + i - p, x + j - p]

with ``x`` (B, C, H, W), ``weight`` (B, G, k, k, H, W), stride 1 and zero padding ``p = (k - 1) // 2``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dynamic_dwconv", "idynamic_dwconv", "IDynamicDWConvFn"]


def dynamic_dwconv(x, weight, bias=None, padding=0):
    """Per-image depth-wise convolution: ``x`` (B, C, H, W), ``weight`` (B, C, k, k) (or (B*C, 1, k, k)),
    ``bias`` (C,) or None; stride 1, zero padding ``padding``. -> (B, C, H', W')."""
    b, c, h, w = x.shape
    weight = weight.reshape(b * c, 1, *weight.shape[-2:])
    out = F.conv2d(x.reshape(1, b * c, h, w), weight, None if bias is None else bias.repeat(b),
                   padding=padding, groups=b * c)
    return out.view(b, c, out.shape[-2], out.shape[-1])


def _acc_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check(x, weight):
    if x.dim() != 4 or weight.dim() != 6:
        raise ValueError(f"idynamic_dwconv: x must be (B, C, H, W) and weight (B, G, k, k, H, W); got "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")
    b, c, h, w = x.shape
    bw, g, k, k2, hw, ww = weight.shape
    if bw != b or k != k2 or (hw, ww) != (h, w) or g <= 0 or c % g:
        raise ValueError(f"idynamic_dwconv: weight {tuple(weight.shape)} does not fit x {tuple(x.shape)} "
                         f"(need (B, G, k, k, H, W) with C divisible by G)")
    return b, c, h, w, g, k


class IDynamicDWConvFn(torch.autograd.Function):
    """Autograd function of :func:`idynamic_dwconv` (forward and backward by shifted slices)."""

    @staticmethod
    def forward(ctx, x, weight):
        b, c, h, w, g, k = _check(x, weight)
        p = (k - 1) // 2
        acc = _acc_dtype(x.dtype)
        xp = F.pad(x, (p, k - 1 - p, p, k - 1 - p)).view(b, g, c // g, h + k - 1, w + k - 1)
        wt = weight.unsqueeze(2)  # (B, G, 1, k, k, H, W)
        out = torch.zeros(b, g, c // g, h, w, dtype=acc, device=x.device)
        for i in range(k):
            for j in range(k):
                out.addcmul_(xp[..., i:i + h, j:j + w], wt[:, :, :, i, j])
        ctx.save_for_backward(x, weight)
        return out.view(b, c, h, w).to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        b, c, h, w, g, k = _check(x, weight)
        p = (k - 1) // 2
        acc = _acc_dtype(x.dtype)
        go = grad_out.contiguous().view(b, g, c // g, h, w)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            gxp = torch.zeros(b, g, c // g, h + k - 1, w + k - 1, dtype=acc, device=x.device)
            wt = weight.unsqueeze(2)
            for i in range(k):
                for j in range(k):
                    gxp[..., i:i + h, j:j + w].addcmul_(go, wt[:, :, :, i, j])
            grad_x = gxp[..., p:p + h, p:p + w].reshape(b, c, h, w).to(x.dtype)
        if ctx.needs_input_grad[1]:
            xp = F.pad(x, (p, k - 1 - p, p, k - 1 - p)).view(b, g, c // g, h + k - 1, w + k - 1)
            grad_w = torch.empty(b, g, k, k, h, w, dtype=acc, device=x.device)
            for i in range(k):
                for j in range(k):
                    # slice assignment, not out= (a non-contiguous out= tensor breaks torch.compile's graph)
                    grad_w[:, :, i, j] = torch.sum(xp[..., i:i + h, j:j + w] * go, dim=2, dtype=acc)
            grad_w = grad_w.to(weight.dtype)
        return grad_x, grad_w


def idynamic_dwconv(x, weight):
    """Inhomogeneous dynamic depth-wise convolution (see the module docstring); stride 1, 'same' size."""
    return IDynamicDWConvFn.apply(x, weight)
