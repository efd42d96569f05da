"""Deterministic weights keyed by state_dict name.

Two implementations that expose the same state_dict keys and shapes receive identical
weights from :func:`det_init_`, so their outputs can be compared without shipping
checkpoints. The tests use this to hold every model against the output of the official
code (``tests/data/<paper>/*.pt``).
"""
import math
import zlib

import torch

__all__ = ["det_value", "det_init_", "det_input", "manifest", "rel_err"]


def det_value(key, shape, dtype, salt=""):
    """Value for one state_dict entry, seeded by the CRC32 of ``salt + key``."""
    gen = torch.Generator().manual_seed(zlib.crc32((salt + key).encode()))
    leaf = key.rsplit(".", 1)[-1]
    f64 = torch.float64
    if leaf == "running_var":
        val = 0.5 + torch.rand(shape, generator=gen, dtype=f64)
    elif leaf == "running_mean":
        val = 0.1 * torch.randn(shape, generator=gen, dtype=f64)
    elif len(shape) <= 1:
        centre = 1.0 if leaf == "weight" else 0.0
        val = centre + 0.1 * torch.randn(shape, generator=gen, dtype=f64)
    else:
        fan_in = max(1, math.prod(shape[1:]))
        val = torch.randn(shape, generator=gen, dtype=f64) / math.sqrt(fan_in)
    return val.to(dtype)


@torch.no_grad()
def det_init_(model, salt=""):
    """Overwrite every floating-point entry of ``model.state_dict()`` in key order."""
    new_state = {
        k: det_value(k, tuple(v.shape), v.dtype, salt) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(new_state, strict=True)
    return model


def det_input(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def manifest(model):
    return [(k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items()]


def rel_err(a, b):
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return (a - b).norm().item() / max(b.norm().item(), 1e-30)
