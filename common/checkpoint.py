"""Checkpoints: safe loading, atomic writes, official file names, one training-state schema, strict
loading with a readable mismatch report, and RNG state capture so a resumed run continues exactly where
it stopped.

Loading never runs code: every load goes through :func:`load_checkpoint`, which reads with
``torch.load(weights_only=True)`` and an allow-list of the few plain types that released checkpoints of
the papers here hold (NumPy arrays / dtypes / scalars and RNG state, ``argparse.Namespace``, yacs
``CfgNode``). A file that needs anything else is refused (:class:`UntrustedCheckpointError`) unless the
user opts in for a trusted file with ``--trust-checkpoint`` or ``LAYERZOO_TRUST_CHECKPOINT=1``.
Checkpoints written here hold only tensors and plain Python values, so they load with a bare
``torch.load(path, weights_only=True)``.
"""
import argparse
import collections
import os
import pickle
import random
import re
import shutil
import tempfile
import warnings

import numpy as np
import torch

__all__ = [
    "TRUST_ENV",
    "TRUST_FLAG",
    "LAST_POINTER",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "UntrustedCheckpointError",
    "CheckpointMismatchError",
    "safe_globals",
    "trusted_by_env",
    "add_trust_arg",
    "save_checkpoint",
    "atomic_write",
    "load_checkpoint",
    "read_state_dict",
    "strip_module_prefix",
    "check_state_dict",
    "load_state_dict_strict",
    "to_plain",
    "get_rng_state",
    "set_rng_state",
    "seed_everything",
    "TrainingCheckpointer",
    "write_last_pointer",
    "find_last_checkpoint",
]

TRUST_ENV = "LAYERZOO_TRUST_CHECKPOINT"
TRUST_FLAG = "--trust-checkpoint"
LAST_POINTER = "last_checkpoint"


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used (the scripts print the message and exit with status 2)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable checkpoint (truncated, not a zip / pickle, ...)."""


class UntrustedCheckpointError(CheckpointError):
    """The file holds a type outside the allow-list; loading it would need a full unpickle."""

    def __init__(self, message, path=None, type_name=None):
        super().__init__(message)
        self.path, self.type_name = path, type_name


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model."""


# --------------------------------------------------------------------------------------------
# Safe loading
# --------------------------------------------------------------------------------------------
def _numpy_safe_globals():
    out = []
    core = getattr(np, "_core", None) or np.core
    for fn in ("_reconstruct", "scalar"):
        obj = getattr(core.multiarray, fn)
        # files written under NumPy 1.x name numpy.core, under 2.x numpy._core
        out += [(obj, f"numpy.core.multiarray.{fn}"), (obj, f"numpy._core.multiarray.{fn}")]
    out += [np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:  # NumPy >= 1.25: the dtype classes (UInt32DType, Float64DType, ...)
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")
                and n not in ("ObjectDType", "StringDType") and isinstance(getattr(dtypes, n), type)]
    return out


def safe_globals():
    """The allow-list handed to ``torch.load(weights_only=True)``.

    NumPy arrays, dtypes and scalars (NumPy RNG state, pycocotools results), ``argparse.Namespace``
    (the ``args`` of (Deformable-)DETR / DAC-DETR releases) and yacs ``CfgNode`` (the ``config`` of
    Swin-lineage releases such as DWNet's). A ``CfgNode`` is read as an ``OrderedDict`` of its values
    (turned back into a ``CfgNode`` when yacs is installed); yacs itself is never imported to load.
    """
    return _numpy_safe_globals() + [argparse.Namespace, (collections.OrderedDict, "yacs.config.CfgNode")]


def trusted_by_env():
    """True when ``LAYERZOO_TRUST_CHECKPOINT`` is set to 1 / true / yes."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes", "y")


def add_trust_arg(parser):
    """Add ``--trust-checkpoint`` next to a script's ``--resume``."""
    parser.add_argument(TRUST_FLAG, dest="trust_checkpoint", action="store_true",
                        help="allow a full unpickle of the checkpoint files given to this run (only for files you "
                             f"trust: unpickling can run code); same as {TRUST_ENV}=1")
    return parser


_REFUSED_PATTERNS = (
    r"GLOBAL (\S+) was not an allowed global",
    r"unsupported GLOBAL (\S+) whose module",
    r"classes allowlisted via `add_safe_globals` but got <class '([^']+)'>",
    r"reduce for unrecognized function <?([^\s>]+)",
    r"types allowlisted via `add_safe_globals`, but got <class '([^']+)'>",
    r"for dict, collections.OrderedDict, collections.Counter, but got <class '([^']+)'>",
    r"Can only append to lists, but got <class '([^']+)'>",
)


def _refused_type(message):
    for pat in _REFUSED_PATTERNS:
        m = re.search(pat, message)
        if m:
            return m.group(1).rstrip(".")
    return None


def _opt_in_text(trust_flag):
    env = f"{TRUST_ENV}=1"
    return f"pass {trust_flag} or set {env}" if trust_flag else f"set {env}"


def _corrupt(path, err):
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith(("Weights only load failed", "Check the documentation",
                                                          "(1)", "(2)", "Please file an issue"))]
    detail = lines[0].split(". This is an internal")[0] if lines else ""
    if not detail or detail.isdigit() or len(detail) < 4:
        detail = f"{type(err).__name__}{': ' + detail if detail else ''}"
    return CorruptCheckpointError(f"corrupt or truncated checkpoint {path} (not a readable torch file: {detail})")


def _as_cfgnodes(obj):
    """OrderedDicts that were yacs CfgNodes (they carry CfgNode's ``__immutable__`` attribute) -> CfgNode."""
    try:
        from yacs.config import CfgNode
    except ImportError:
        return obj

    def walk(x):
        if isinstance(x, dict):
            items = {k: walk(v) for k, v in x.items()}
            if type(x) is collections.OrderedDict and "__immutable__" in getattr(x, "__dict__", {}):
                node = CfgNode(items)
                if x.__dict__.get("__immutable__"):
                    node.freeze()
                return node
            if type(x) in (dict, collections.OrderedDict):
                x.update(items)
            return x
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(obj)


def _download(url):
    """A released checkpoint fetched once into torch.hub's cache (hash-checked when the file name
    carries one, as torch.hub does); returns the local file."""
    from urllib.parse import urlparse

    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(folder, exist_ok=True)
    local = os.path.join(folder, os.path.basename(urlparse(url).path))
    if not os.path.isfile(local):
        m = torch.hub.HASH_REGEX.search(os.path.basename(local))
        torch.hub.download_url_to_file(url, local, m.group(1) if m else None, progress=False)
    return local


def _torch_load(path, map_location, trust):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pickle protocol.*")
        if trust:  # the user's explicit opt-in for a file they trust
            return torch.load(path, map_location=map_location, weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(path, map_location="cpu", trust=False, trust_flag=TRUST_FLAG):
    """Read a checkpoint file without running code stored in it.

    ``torch.load(weights_only=True)`` with :func:`safe_globals`; an ``https://`` address is downloaded
    into torch.hub's cache first (as ``torch.hub.load_state_dict_from_url`` does). ``trust=True`` (or
    ``LAYERZOO_TRUST_CHECKPOINT=1``) allows a full unpickle, for a file the user trusts.
    Raises :class:`CheckpointNotFoundError` (missing file), :class:`UntrustedCheckpointError` (a type
    outside the allow-list; the message names it and the opt-in: ``trust_flag`` and the environment
    variable) or :class:`CorruptCheckpointError` (truncated / not a checkpoint), each naming the file.
    """
    path = os.fspath(path)
    if path.startswith(("https://", "http://")):
        path = _download(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    trust = bool(trust) or trusted_by_env()
    try:
        obj = _torch_load(path, map_location, trust)
    except pickle.UnpicklingError as err:
        type_name = None if trust else _refused_type(str(err))
        if type_name is None:
            raise _corrupt(path, err) from None
        raise UntrustedCheckpointError(
            f"refusing to load checkpoint {path}: it holds {type_name}, which is not on the list of types that "
            f"load safely (unpickling it could run code stored in the file). If you trust this file, "
            f"{_opt_in_text(trust_flag)} to allow a full unpickle.", path=path, type_name=type_name) from None
    except Exception as err:  # EOF, not a zip, bad central directory, truncated record, malformed pickle
        raise _corrupt(path, err) from None
    return obj if trust else _as_cfgnodes(obj)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def atomic_write(path, write):
    """Write ``path`` through ``write(binary_file)`` into a temporary file in the same folder, fsync, then
    rename: a reader never sees a half-written file, and a failed write leaves the old file as it was."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] or ".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_checkpoint(obj, path):
    """torch.save to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_copy(src, dst):
    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return atomic_write(dst, write)


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


def read_state_dict(path, trust=False):
    """The parameter dict stored in a weights file, on the CPU.

    Read safely (:func:`load_checkpoint`; no flag names the opt-in here, only the environment
    variable), take the ``state_dict`` / ``model`` sub-dict of a training checkpoint, and drop the
    ``module.`` prefix from every key that carries it (DataParallel / DDP saves).
    """
    obj = _unwrap_state_dict(load_checkpoint(path, trust=trust, trust_flag=None))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{os.fspath(path)} holds a {type(obj).__name__}, not a state dict")
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


def to_plain(obj):
    """``obj`` as plain Python values that ``torch.load(weights_only=True)`` reads without an
    allow-list: Namespace -> dict, paths / devices / dtypes -> str, NumPy arrays -> tensors, NumPy
    scalars -> Python numbers, tuples / lists / dicts recursively; tensors unchanged; anything else -> repr."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {(k if isinstance(k, (str, int, float, bool)) or k is None else str(k)): to_plain(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [to_plain(v) for v in obj]
        return out if isinstance(obj, list) else tuple(out)
    if isinstance(obj, (set, frozenset)):
        return [to_plain(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)).clone() if obj.dtype != object else to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (os.PathLike, torch.device, torch.dtype)):
        return str(obj)
    return repr(obj)


def get_rng_state():
    """Python, NumPy, torch (and CUDA) generator states as tensors and plain values only."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, tuple of ints, gauss_next)
        "numpy": {"bit_generator": np_state[0], "state": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
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
    """Restore :func:`get_rng_state`'s dict (also the older form holding ``np.random.get_state()``)."""
    if not state:
        return
    py = state["python"]
    random.setstate((py[0], tuple(int(v) for v in py[1]), py[2]))
    npst = state["numpy"]
    if isinstance(npst, dict):
        keys = npst["state"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        npst = (npst["bit_generator"], keys.astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    np.random.set_state(tuple(npst))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# One training-state checkpointer, with a ``last`` pointer
# --------------------------------------------------------------------------------------------
def write_last_pointer(folder, filename):
    """Atomically write ``<folder>/last_checkpoint`` holding ``filename`` (relative to ``folder``)."""
    name = os.path.relpath(os.path.join(folder, filename), folder) if os.path.isabs(filename) else filename
    return atomic_write(os.path.join(folder, LAST_POINTER), lambda f: f.write((name + "\n").encode()))


def find_last_checkpoint(folder):
    """The file named by ``<folder>/last_checkpoint`` (a path joined to ``folder``), or None when there
    is no pointer or the file it names is gone."""
    pointer = os.path.join(os.fspath(folder), LAST_POINTER)
    try:
        with open(pointer, encoding="utf-8") as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name:
        return None
    path = os.path.join(os.fspath(folder), name)
    return path if os.path.isfile(path) else None


def _bare(module):
    return module.module if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) \
        else module


def _state_of(obj):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, torch.nn.Module):
        return _bare(obj).state_dict()
    if hasattr(obj, "is_enabled") and not obj.is_enabled():  # a disabled GradScaler has no state
        return None
    return obj.state_dict()


class TrainingCheckpointer:
    """Saves and restores the whole training state in one schema.

    Fields (the file is a dict): ``model``, ``ema``, ``optimizer``, ``scheduler``, ``scaler`` (state
    dicts), ``epoch``, ``iteration``, ``best_metric``, ``rng`` (:func:`get_rng_state`), plus the
    script's ``extra`` entries (official keys such as ``acc`` or ``args``, as plain values). ``keys``
    renames fields to a lineage's official key names (e.g. ``{"model": "state_dict"}``), and
    ``model_prefix`` prefixes the model's keys (``"module."`` for DataParallel-era releases), so
    official tooling reads the files. Every file is written atomically and then
    ``<folder>/last_checkpoint`` names it (:func:`find_last_checkpoint`), which is what
    ``slurm/launch.py`` resumes from. Nothing in the file needs more than
    ``torch.load(weights_only=True)``.

    ``filename`` may use ``{epoch}`` / ``{iteration}`` (e.g. ``ckpt_epoch_{epoch}.pth``).
    """

    FIELDS = ("model", "ema", "optimizer", "scheduler", "scaler", "epoch", "iteration", "best_metric", "rng")

    def __init__(self, folder, filename="checkpoint.pth", best_filename=None, keys=None, model_prefix=""):
        self.folder = os.fspath(folder)
        self.filename = filename
        self.best_filename = best_filename
        self.keys = {f: f for f in self.FIELDS}
        self.keys.update(keys or {})
        unknown = set(keys or {}) - set(self.FIELDS)
        if unknown:
            raise ValueError(f"unknown checkpoint fields {sorted(unknown)}; fields: {', '.join(self.FIELDS)}")
        self.model_prefix = model_prefix

    # -- writing --------------------------------------------------------------------------------
    def state(self, *, model=None, ema=None, optimizer=None, scheduler=None, scaler=None, epoch=None,
              iteration=None, best_metric=None, rng=True, extra=None):
        """The dict :meth:`save` writes."""
        out = {}
        model_sd = _state_of(model)
        if model_sd is not None:
            out[self.keys["model"]] = {self.model_prefix + k: v for k, v in model_sd.items()}
        values = {"ema": _state_of(ema), "optimizer": _state_of(optimizer), "scheduler": _state_of(scheduler),
                  "scaler": _state_of(scaler), "epoch": epoch, "iteration": iteration, "best_metric": best_metric,
                  "rng": get_rng_state() if rng else None}
        for field, value in values.items():
            if value is not None:
                out[self.keys[field]] = to_plain(value) if field in ("epoch", "iteration", "best_metric") else value
        for k, v in (extra or {}).items():
            if k in out:
                raise ValueError(f"extra key {k!r} clashes with a checkpoint field")
            out[k] = to_plain(v)
        return out

    def save(self, *, is_best=False, copies=(), **fields):
        """Write the state (fields as in :meth:`state`) to ``folder/filename``; copy it to
        ``best_filename`` when ``is_best`` and to each name in ``copies``; then point ``last_checkpoint``
        at it. Returns the path written."""
        state = self.state(**fields)
        names = {"epoch": fields.get("epoch"), "iteration": fields.get("iteration")}
        name = self.filename.format(**names)
        path = save_checkpoint(state, os.path.join(self.folder, name))
        for other in list(copies) + ([self.best_filename] if is_best and self.best_filename else []):
            _atomic_copy(path, os.path.join(self.folder, other.format(**names)))
        write_last_pointer(self.folder, name)
        return path

    def last(self):
        """The newest checkpoint this folder's pointer names, or None."""
        return find_last_checkpoint(self.folder)

    # -- reading --------------------------------------------------------------------------------
    def get(self, state, field, default=None):
        """A field of a loaded checkpoint, by its schema name."""
        return state.get(self.keys[field], default)

    def restore(self, state, *, model=None, ema=None, optimizer=None, scheduler=None, scaler=None, rng=True,
                strict=True, source="checkpoint"):
        """Load the saved states into the objects given (those that are None are left alone) and,
        with ``rng``, restore the generators. Returns ``{"epoch", "iteration", "best_metric"}``."""
        for field, obj in (("model", model), ("ema", ema)):
            sd = self.get(state, field)
            if obj is None or sd is None:
                continue
            target = _bare(obj)
            if strict:
                load_state_dict_strict(target, sd, source=source)
            else:
                target.load_state_dict(strip_module_prefix(sd, self.model_prefix or "module."), strict=False)
        for field, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
            sd = self.get(state, field)
            if obj is not None and sd is not None:
                obj.load_state_dict(sd)
        if rng:
            set_rng_state(self.get(state, "rng"))
        return {f: self.get(state, f) for f in ("epoch", "iteration", "best_metric")}

    def load(self, path=None, trust=False, **objects):
        """Read ``path`` (default: the file ``last_checkpoint`` names) safely and :meth:`restore` it.
        Returns the loaded dict."""
        path = path or self.last()
        if path is None:
            raise CheckpointNotFoundError(f"no checkpoint to resume from: {os.path.join(self.folder, LAST_POINTER)} "
                                          "does not exist or names a missing file")
        state = load_checkpoint(path, trust=trust)
        self.restore(state, source=f"checkpoint {path}", **objects)
        return state
