"""Configs as data: safe YAML, yacs configs with ``_BASE_`` inheritance, and the resolved config of each run.

Two kinds of config live in the project:

* **yacs configs** (the Swin-style ``main.py`` of DWNet): a script declares its defaults as a
  :class:`yacs.config.CfgNode`, then :func:`load_config` / :func:`update_config` merge a YAML file (with its
  ``_BASE_`` parents), the ``--opts KEY VALUE ...`` list and the command-line flags, and freeze the result::

      cfg = load_config("configs/dwnet_tiny.yaml", defaults=_C, opts=["TRAIN.EPOCHS", "30"])

* **YAML recipes** for scripts driven by flags (``dianet/configs/*.yaml``): read with :func:`read_yaml` and
  turned into a command line by the script that owns them.

Every YAML file is read with ``yaml.safe_load``: a file carrying a Python tag (``!!python/object/apply:...``)
is refused, never executed. yacs's own ``merge_from_file`` / ``load_cfg`` would also import a ``.py`` config
(running it); this module never calls them, so a ``.py`` file given as a config is refused too.

:func:`dump_run_config` writes the resolved config (a CfgNode, an ``argparse.Namespace`` or a dict) into a
run's output folder as ``config.yaml``, atomically.
"""
import argparse
import os
from pathlib import PurePath

import yaml
from yacs.config import CfgNode

from common.checkpoint import atomic_write

__all__ = [
    "CfgNode",
    "ConfigError",
    "BASE_KEY",
    "SWIN_FLAG_KEYS",
    "read_yaml",
    "load_yaml_with_base",
    "merge_from_file",
    "merge_opts",
    "set_key",
    "load_config",
    "update_config",
    "add_config_args",
    "to_plain",
    "dump_run_config",
]

BASE_KEY = "_BASE_"

# The Swin-Transformer ``update_config(config, args)`` table: argparse dest -> config key. A flag is applied
# when its value is truthy, as there (so ``--batch-size 0`` or an absent ``--tag`` leaves the key alone).
SWIN_FLAG_KEYS = {
    "batch_size": "DATA.BATCH_SIZE",
    "data_path": "DATA.DATA_PATH",
    "zip": "DATA.ZIP_MODE",
    "cache_mode": "DATA.CACHE_MODE",
    "resume": "MODEL.RESUME",
    "accumulation_steps": "TRAIN.ACCUMULATION_STEPS",
    "use_checkpoint": "TRAIN.USE_CHECKPOINT",
    "amp_opt_level": "AMP_OPT_LEVEL",
    "output": "OUTPUT",
    "tag": "TAG",
    "eval": "EVAL_MODE",
    "throughput": "THROUGHPUT_MODE",
}


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message names the file or the key."""


def read_yaml(path):
    """The mapping in the YAML file ``path``, read with ``yaml.safe_load`` (an empty file gives ``{}``).

    Raises :class:`ConfigError` naming the file when it is missing, is not YAML, uses a Python tag or other
    unsafe construct, or does not hold a mapping at its top level.
    """
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in ("", ".yaml", ".yml", ".json"):  # Swin's config.json is YAML text
        raise ConfigError(f"{path}: a config must be a .yaml / .yml file (or a config.json of YAML text)")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(f"{path}: refused, it is not plain YAML (only plain YAML is read, no Python tags): "
                          f"{e.problem}{_where(e)}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values, got a {type(data).__name__}")
    return data


def _where(err):
    mark = getattr(err, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _deep_update(base, child):
    out = dict(base)
    for k, v in child.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml_with_base(path, base_key=BASE_KEY, _chain=()):
    """:func:`read_yaml` with inheritance: ``base_key`` (a path or a list of paths, relative to the file that
    names them) lists parent files merged first, in order; the file's own keys then override theirs,
    nested mappings key by key. The ``base_key`` entry itself is removed. A cycle is refused."""
    path = os.path.abspath(os.fspath(path))
    if path in _chain:
        raise ConfigError(f"{path}: {base_key} cycle: {' -> '.join(_chain + (path,))}")
    data = read_yaml(path)
    bases = data.pop(base_key, None) or []
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, (list, tuple)) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {base_key} must be a file path or a list of file paths, got {bases!r}")
    merged = {}
    for base in bases:
        if not base:  # Swin's default BASE: ['']
            continue
        merged = _deep_update(merged, load_yaml_with_base(os.path.join(os.path.dirname(path), base), base_key,
                                                          _chain + (path,)))
    return _deep_update(merged, data)


def _merge_error(source, err):
    msg = err.args[0] if err.args else str(err)
    return ConfigError(f"{source}: {msg}")


def merge_from_file(cfg, path, base_key=BASE_KEY):
    """Merge the YAML file ``path`` (with its ``base_key`` parents) into ``cfg`` in place and return it.

    Keys must exist in ``cfg`` (unless it allows new keys) and values keep their type, as yacs checks;
    a violation is one :class:`ConfigError` naming the file and the key."""
    data = load_yaml_with_base(path, base_key)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (KeyError, ValueError, AssertionError, AttributeError) as e:
        raise _merge_error(os.fspath(path), e) from None
    return cfg


def merge_opts(cfg, opts, source="--opts"):
    """Merge a ``KEY VALUE KEY VALUE ...`` list (the ``--opts`` of Swin-style scripts) into ``cfg`` in place.

    Values are parsed as Python literals (``30``, ``1e-3``, ``"[2, 2, 6, 2]"``, ``True``), else kept as
    strings, and must have the type of the default (yacs's rule; ints are not widened to floats).
    An odd list, an unknown key or a wrong type is one :class:`ConfigError` naming the key."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ConfigError(f"{source} takes KEY VALUE pairs; {opts[-1]!r} has no value")
    for key, value in zip(opts[0::2], opts[1::2]):
        try:
            cfg.merge_from_list([key, value])
        except (KeyError, ValueError, AssertionError, AttributeError) as e:
            old = _get(cfg, key)
            if old is _MISSING:
                raise ConfigError(f"{source}: unknown config key {key!r}") from None
            if isinstance(e, ValueError) and "Type mismatch" in str(e):
                raise ConfigError(f"{source}: {key} takes a value of type {type(old).__name__} (it is {old!r}), "
                                  f"got {value!r}") from None
            raise _merge_error(f"{source} {key}", e) from None
    return cfg


_MISSING = object()


def _get(cfg, key):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def set_key(cfg, key, value):
    """Set the dotted ``key`` of ``cfg`` to ``value`` (no type check: for values a script computes).
    An unknown key is a :class:`ConfigError`."""
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or (leaf not in node and not node.is_new_allowed()):
        raise ConfigError(f"unknown config key {key!r}")
    node[leaf] = value
    return cfg


def load_config(path=None, defaults=None, opts=(), freeze=True, base_key=BASE_KEY):
    """A new config: a clone of ``defaults`` (a CfgNode; ``None``: an empty one that takes any key), then the
    YAML file ``path`` with its ``base_key`` parents, then the ``opts`` list; frozen unless ``freeze=False``."""
    cfg = defaults.clone() if defaults is not None else CfgNode(new_allowed=True)
    cfg.defrost()
    if path:
        merge_from_file(cfg, path, base_key)
    merge_opts(cfg, opts)
    if freeze:
        cfg.freeze()
    return cfg


def update_config(cfg, args, flag_keys=SWIN_FLAG_KEYS, cfg_attr="cfg", opts_attr="opts", base_key=BASE_KEY):
    """The Swin-Transformer ``update_config(config, args)`` pattern, in place: the file ``args.<cfg_attr>``,
    then ``args.<opts_attr>``, then every flag of ``flag_keys`` (argparse dest -> key) whose value is truthy;
    ``cfg`` is frozen at the end. Returns ``cfg``."""
    cfg.defrost()
    path = getattr(args, cfg_attr, None)
    if path:
        merge_from_file(cfg, path, base_key)
    merge_opts(cfg, getattr(args, opts_attr, None))
    for dest, key in flag_keys.items():
        value = getattr(args, dest, None)
        if value:
            set_key(cfg, key, value)
    cfg.freeze()
    return cfg


def add_config_args(parser, required=True):
    """``--cfg FILE`` and ``--opts KEY VALUE ...`` as in the Swin-style scripts."""
    parser.add_argument("--cfg", type=str, required=required, metavar="FILE", help="path to the config file")
    parser.add_argument("--opts", default=None, nargs="+", metavar="KEY VALUE",
                        help="modify config options by adding 'KEY VALUE' pairs")
    return parser


def to_plain(obj):
    """``obj`` as plain YAML data: CfgNode / dict / Namespace -> dict, tuple / list / set -> list,
    path -> str, numbers / str / bool / None kept, anything else -> its ``str``."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_plain(v) for v in obj), key=repr)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return obj.item()
    return str(obj)


def dump_run_config(folder, config_or_args, filename="config.yaml"):
    """Write the resolved config of a run into ``folder/filename`` (atomically) and return the path.

    A CfgNode is written with ``cfg.dump()`` (so :func:`load_config` reads it back into the same defaults);
    an ``argparse.Namespace`` or dict as its plain mapping (:func:`to_plain`), keys in their order.
    Call it on the main process only."""
    if isinstance(config_or_args, CfgNode):
        text = config_or_args.dump()
    else:
        text = yaml.safe_dump(to_plain(config_or_args), sort_keys=False, default_flow_style=False)
    path = os.path.join(os.fspath(folder), filename)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path
