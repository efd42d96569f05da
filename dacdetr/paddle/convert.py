"""Convert DAC-DETR weights between the PyTorch model (``dacdetr.models``) and the Paddle port.

Explicit per-layer rules, decided from the parameter's name (never from its shape):

* ``nn.Linear`` weights transpose ((out, in) in PyTorch, (in, out) in Paddle): the deformable-attention
  projections (``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``), the FFNs
  (``linear1``, ``linear2``), the self-attention ``out_proj`` and packed ``in_proj_weight`` ((3C, C) <->
  (C, 3C)), ``enc_output``, ``pos_trans``, every ``class_embed.{i}`` and ``bbox_embed.{i}.layers.{j}``;
* frozen BatchNorm statistics rename: ``running_mean`` <-> ``_mean``, ``running_var`` <-> ``_variance``
  (``num_batches_tracked`` of a BatchNorm checkpoint is dropped and reported);
* everything else keeps its value: conv weights, ``nn.Embedding`` weights (``query_embed``,
  ``label_enc``), LayerNorm / GroupNorm affine terms, biases, frozen-BN ``weight`` / ``bias``,
  ``level_embed``.

A key no rule knows is not converted: it is listed in the report (``unused``), as are dropped entries
(``dropped``). ``module.`` prefixes (DDP saves) are removed.

Command line (reads a PyTorch checkpoint safely, writes a Paddle ``.pdparams``)::

    python -m dacdetr.paddle.convert checkpoint0011.pth checkpoint0011.pdparams
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import Dict, List

import numpy as np

__all__ = ["torch_to_paddle", "paddle_to_torch", "ConvertedState", "rule_for", "load_torch_file",
           "load_into", "LINEAR_PATTERNS"]

LINEAR_PATTERNS = [
    r"(^|\.)(sampling_offsets|attention_weights|value_proj|output_proj)\.weight$",
    r"(^|\.)(linear1|linear2)\.weight$",
    r"(^|\.)self_attn\.out_proj\.weight$",
    r"(^|\.)self_attn\.in_proj_weight$",
    r"(^|\.)(enc_output|pos_trans)\.weight$",
    r"(^|\.)class_embed\.\d+\.weight$",
    r"(^|\.)bbox_embed\.\d+\.layers\.\d+\.weight$",
]
_KEEP_PATTERNS = [
    r"(^|\.)(sampling_offsets|attention_weights|value_proj|output_proj|linear1|linear2|enc_output|pos_trans)\.bias$",
    r"(^|\.)self_attn\.(out_proj\.bias|in_proj_bias)$",
    r"(^|\.)class_embed\.\d+\.bias$",
    r"(^|\.)bbox_embed\.\d+\.layers\.\d+\.bias$",
    r"(^|\.)(norm\d|enc_output_norm|pos_trans_norm)\.(weight|bias)$",      # LayerNorm
    r"^input_proj\.\d+\.0\.(weight|bias)$",                                 # conv
    r"^input_proj\.\d+\.1\.(weight|bias)$",                                 # GroupNorm
    r"^(query_embed|label_enc)\.weight$",                                   # nn.Embedding
    r"^transformer\.level_embed$",
    r"(^|\.)(conv\d|downsample\.0)\.weight$",                               # backbone convs
    r"(^|\.)(bn\d|downsample\.1)\.(weight|bias)$",                          # frozen BN affine
]
_BN_STATS = r"(^|\.)(bn\d|downsample\.1)\.({})$"
_DROP = [r"(^|\.)num_batches_tracked$", r"total_params$", r"total_ops$"]


def rule_for(name: str, source: str = "torch") -> str:
    """'transpose', 'keep', 'rename' (BN statistics), 'drop' or 'unknown' for a key of ``source``."""
    if any(re.search(p, name) for p in _DROP):
        return "drop"
    if any(re.search(p, name) for p in LINEAR_PATTERNS):
        return "transpose"
    stats = "running_mean|running_var" if source == "torch" else "_mean|_variance"
    if re.search(_BN_STATS.format(stats), name):
        return "rename"
    if any(re.search(p, name) for p in _KEEP_PATTERNS):
        return "keep"
    return "unknown"


_T2P = {"running_mean": "_mean", "running_var": "_variance"}
_P2T = {v: k for k, v in _T2P.items()}


class ConvertedState(dict):
    """A converted state dict; ``.report`` = {'transposed', 'renamed', 'kept', 'dropped', 'unused'} key lists."""

    def __init__(self, *args, report=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = report or {}

    def summary(self) -> str:
        r = self.report
        text = ", ".join(f"{k} {len(v)}" for k, v in r.items())
        if r.get("unused"):
            text += "; unused keys: " + ", ".join(r["unused"][:20]) + (" ..." if len(r["unused"]) > 20 else "")
        return text


def _to_numpy(v):
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch tensor
        return v.detach().cpu().numpy()
    if hasattr(v, "numpy"):  # paddle tensor
        return v.numpy()
    return np.asarray(v)


def _convert(state_dict, source, prefix="module."):
    if state_dict and prefix and all(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
    report: Dict[str, List[str]] = {"transposed": [], "renamed": [], "kept": [], "dropped": [], "unused": []}
    out = {}
    for name, value in state_dict.items():
        rule = rule_for(name, source)
        if rule == "drop":
            report["dropped"].append(name)
            continue
        if rule == "unknown":
            report["unused"].append(name)
            continue
        arr = _to_numpy(value)
        if rule == "transpose":
            if arr.ndim != 2:
                raise ValueError(f"{name}: a Linear weight must be 2-d, got shape {arr.shape}")
            out[name] = np.ascontiguousarray(arr.T)
            report["transposed"].append(name)
        elif rule == "rename":
            head, stat = name.rsplit(".", 1)
            new = head + "." + (_T2P if source == "torch" else _P2T)[stat]
            out[new] = arr
            report["renamed"].append(name)
        else:
            out[name] = arr
            report["kept"].append(name)
    return out, report


def torch_to_paddle(state_dict, prefix="module.") -> ConvertedState:
    """PyTorch DAC-DETR state dict (ours or the official release) -> Paddle state dict (paddle tensors)."""
    import paddle

    arrays, report = _convert(state_dict, "torch", prefix)
    return ConvertedState({k: paddle.to_tensor(v) for k, v in arrays.items()}, report=report)


def paddle_to_torch(state_dict) -> ConvertedState:
    """Paddle state dict -> PyTorch state dict (torch tensors)."""
    import torch

    arrays, report = _convert(state_dict, "paddle", prefix="")
    return ConvertedState({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, report=report)


def load_torch_file(path):
    """State dict of a PyTorch weights file, read safely (no code runs; see common.checkpoint)."""
    from common.checkpoint import read_state_dict

    return read_state_dict(path)


def load_into(model, state_dict, strict=True):
    """Load a Paddle state dict into ``model``; returns (missing, unexpected, mismatched shapes).
    With ``strict`` any of them raises a ValueError naming the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: {list(state_dict[k].shape)} vs {list(own[k].shape)}" for k in own
              if k in state_dict and list(state_dict[k].shape) != list(own[k].shape)]
    if strict and (missing or unexpected or shapes):
        raise ValueError(f"state dict does not fit the model: missing {missing[:10]}, unexpected {unexpected[:10]}, "
                         f"shape mismatch {shapes[:10]}")
    model.set_state_dict({k: v.astype(own[k].dtype) if v.dtype != own[k].dtype else v
                          for k, v in state_dict.items() if k in own})
    return missing, unexpected, shapes


def main(argv=None):
    p = argparse.ArgumentParser("Convert a PyTorch DAC-DETR checkpoint into Paddle weights (.pdparams)")
    p.add_argument("src")
    p.add_argument("dst")
    args = p.parse_args(argv)
    import paddle

    try:
        state = torch_to_paddle(load_torch_file(args.src))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {args.src}: {e}", file=sys.stderr)
        sys.exit(2)
    paddle.save(dict(state), args.dst)
    print(f"{args.dst}: {len(state)} tensors ({state.summary()})")


if __name__ == "__main__":
    main()
