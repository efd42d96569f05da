"""Parameter and FLOP counting used by every ``paras_flops``-style script.

FLOPs are reported as multiply-accumulates (MACs), the convention of the papers' tables (fvcore counts one
fused multiply-add as one flop).
"""
import logging

import torch

__all__ = ["count_params", "count_flops", "format_count"]


def count_params(model, trainable_only=False):
    """Number of parameters, shared parameters counted once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def count_flops(model, inputs):
    """MACs of one forward pass on ``inputs`` (a tensor, or a tuple of positional inputs)."""
    from fvcore.nn import FlopCountAnalysis

    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        logging.getLogger("fvcore").setLevel(logging.ERROR)
        with torch.no_grad():
            return int(analysis.total())
    finally:
        model.train(was_training)


def format_count(n, unit=""):
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n}{unit}"
