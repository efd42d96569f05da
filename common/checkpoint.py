"""Checkpoints: atomic writes, official file names, strict loading with a readable mismatch report,
and RNG state capture so a resumed run continues exactly where it stopped."""
import os
import random
import shutil
import tempfile

import numpy as np
import torch

__all__ = [
    "CheckpointMismatchError",
    "save_checkpoint",
    "save_official",
    "load_checkpoint",
    "read_state_dict",
    "strip_module_prefix",
    "check_state_dict",
    "load_state_dict_strict",
    "get_rng_state",
    "set_rng_state",
    "seed_everything",
]


class CheckpointMismatchError(RuntimeError):
    """The checkpoint's keys or shapes do not match the model."""


def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_official(state, is_best, checkpoint_dir, filename="checkpoint.pth.tar", best_name="model_best.pth.tar"):
    """pytorch-classification layout: ``<dir>/checkpoint.pth.tar`` every epoch, copied to
    ``model_best.pth.tar`` when the accuracy improved."""
    path = save_checkpoint(state, os.path.join(checkpoint_dir, filename))
    if is_best:
        best = os.path.join(checkpoint_dir, best_name)
        tmp = best + ".tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, best)
    return path


def load_checkpoint(path, map_location="cpu", weights_only=False):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=weights_only)


def strip_module_prefix(state_dict, prefix="module."):
    """Remove the DataParallel / DDP prefix (only where every key carries it)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _unwrap_state_dict(obj):
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state"):
            if key in obj and isinstance(obj[key], dict):
                return obj[key]
    return obj


def read_state_dict(path):
    """The parameter dict stored in a weights file, on the CPU.

    Read with ``weights_only=True`` first (falling back to a full unpickle for files that hold
    other objects), take the ``state_dict`` / ``model`` sub-dict of a training checkpoint, and
    drop the ``module.`` prefix from every key that carries it (DataParallel / DDP saves).
    """
    try:
        obj = load_checkpoint(path, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception:
        obj = load_checkpoint(path, weights_only=False)
    obj = _unwrap_state_dict(obj)
    if not isinstance(obj, dict):
        raise TypeError(f"{os.fspath(path)} holds a {type(obj).__name__}, not a state dict")
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in obj.items()}


def check_state_dict(model, state_dict, max_list=20):
    """Return a human-readable report of missing, unexpected and mis-shaped keys ('' when it matches)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", shaped)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines += [f"    {x}" for x in items[:max_list]]
            if len(items) > max_list:
                lines.append(f"    ... and {len(items) - max_list} more")
    return "\n".join(lines)


def load_state_dict_strict(model, state_dict, source="checkpoint"):
    """Load with strict=True after stripping ``module.``; on mismatch raise one clear error."""
    state_dict = strip_module_prefix(_unwrap_state_dict(state_dict))
    report = check_state_dict(model, state_dict)
    if report:
        raise CheckpointMismatchError(
            f"{source} does not match {type(model).__name__} (is it from another architecture or config?):\n{report}"
        )
    model.load_state_dict(state_dict, strict=True)
    return model


def get_rng_state():
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed):
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def set_rng_state(state):
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
