"""DWNet's yacs config: the official keys and defaults (the Swin-Transformer ``config.py`` plus ``MODEL.DWNET``),
read through :mod:`common.config` (safe YAML, ``BASE`` inheritance as officially, ``--opts KEY VALUE ...``).

    cfg = load_config("dwnet_tiny_patch4_window7_224")          # a file name in dwnet/configs, or a path
    cfg = load_config("configs/x.yaml", opts=["MODEL.DROP_PATH_RATE", "0.1"])
    model = dwnet.models.build_model(cfg)

``get_config(args)`` is the official entry point of ``main.py``: the defaults, then ``--cfg`` (with its
``BASE`` parents), then ``--opts``, then the flags (:data:`FLAG_KEYS`, ``--data-set``, ``--epoch``), as
officially (:func:`update_config`). Every YAML file is read safely through :mod:`common.config` (plain YAML
only, never yacs's own loader); a run's ``config.json`` (YAML text) reads back with :func:`load_config`.
"""
import argparse
import os

from common.config import SWIN_FLAG_KEYS, CfgNode, ConfigError
from common.config import load_config as _load_config
from common.config import update_config as _update_config

__all__ = ["CONFIG_DIR", "BASE_KEY", "FLAG_KEYS", "DATA_SETS", "AMP_LEVELS", "get_defaults", "config_names",
           "config_path", "load_config", "update_config", "get_config"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
BASE_KEY = "BASE"  # the official inheritance key (Swin's)
FLAG_KEYS = dict(SWIN_FLAG_KEYS)  # main.py flag (argparse dest) -> key, applied when truthy (Swin's rule)
DATA_SETS = {"IMNET": "imagenet", "CIFAR": "cifar"}  # --data-set -> DATA.DATASET
AMP_LEVELS = ("O0", "O1", "O2")  # --amp-opt-level / AMP_OPT_LEVEL (torch.amp in main.py)

_C = CfgNode()
_C.BASE = [""]
_C.DATA = CfgNode()
_C.DATA.BATCH_SIZE = 128
_C.DATA.DATA_PATH = ""
_C.DATA.DATASET = "imagenet"
_C.DATA.IMG_SIZE = 224
_C.DATA.INTERPOLATION = "bicubic"
_C.DATA.ZIP_MODE = False
_C.DATA.CACHE_MODE = "part"
_C.DATA.PIN_MEMORY = True
_C.DATA.NUM_WORKERS = 8
_C.MODEL = CfgNode()
_C.MODEL.TYPE = "swin"  # the official default; build_model takes dwnet / ddwnet / iddwnet
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"
_C.MODEL.RESUME = ""
_C.MODEL.NUM_CLASSES = 1000
_C.MODEL.DROP_RATE = 0.0
_C.MODEL.DROP_PATH_RATE = 0.1
_C.MODEL.LABEL_SMOOTHING = 0.1
_C.MODEL.DWNET = CfgNode()
_C.MODEL.DWNET.PATCH_SIZE = 4
_C.MODEL.DWNET.IN_CHANS = 3
_C.MODEL.DWNET.EMBED_DIM = 96
_C.MODEL.DWNET.DEPTHS = [2, 2, 6, 2]
_C.MODEL.DWNET.WINDOW_SIZE = 7
_C.MODEL.DWNET.MLP_RATIO = 4.0
_C.MODEL.DWNET.APE = False
_C.MODEL.DWNET.PATCH_NORM = True
_C.MODEL.DWNET.CONV_TYPE = "v1"  # unused, as officially
_C.MODEL.DWNET.DYNAMIC = False
_C.MODEL.DWNET.INHOMO = False
_C.MODEL.DWNET.INHOMO_HEADS = [4, 8, 16, 32]
_C.TRAIN = CfgNode()
_C.TRAIN.START_EPOCH = 0
_C.TRAIN.EPOCHS = 300
_C.TRAIN.WARMUP_EPOCHS = 20
_C.TRAIN.WEIGHT_DECAY = 0.05
_C.TRAIN.BASE_LR = 5e-4
_C.TRAIN.WARMUP_LR = 5e-7
_C.TRAIN.MIN_LR = 5e-6
_C.TRAIN.CLIP_GRAD = 5.0
_C.TRAIN.AUTO_RESUME = False
_C.TRAIN.ACCUMULATION_STEPS = 0
_C.TRAIN.USE_CHECKPOINT = False
_C.TRAIN.LR_SCHEDULER = CfgNode()
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1
_C.TRAIN.OPTIMIZER = CfgNode()
_C.TRAIN.OPTIMIZER.NAME = "adamw"
_C.TRAIN.OPTIMIZER.EPS = 1e-8
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9
_C.AUG = CfgNode()
_C.AUG.COLOR_JITTER = 0.4
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"
_C.AUG.REPROB = 0.25
_C.AUG.REMODE = "pixel"
_C.AUG.RECOUNT = 1
_C.AUG.MIXUP = 0.8
_C.AUG.CUTMIX = 1.0
_C.AUG.CUTMIX_MINMAX = None
_C.AUG.MIXUP_PROB = 1.0
_C.AUG.MIXUP_SWITCH_PROB = 0.5
_C.AUG.MIXUP_MODE = "batch"
_C.TEST = CfgNode()
_C.TEST.CROP = True
_C.AMP_OPT_LEVEL = ""
_C.OUTPUT = ""
_C.TAG = "default"
_C.SAVE_FREQ = 1
_C.PRINT_FREQ = 10
_C.SEED = 0
_C.EVAL_MODE = False
_C.THROUGHPUT_MODE = False
_C.LOCAL_RANK = 0


def get_defaults():
    """A fresh (unfrozen) copy of the official defaults."""
    return _C.clone()


def config_names():
    """The config files shipped in ``dwnet/configs`` (names without ``.yaml``), sorted."""
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def config_path(name_or_path):
    """A path as given, or the shipped config of that name (``dwnet_tiny_patch4_window7_224``)."""
    p = os.fspath(name_or_path)
    if os.path.sep in p or p.endswith((".yaml", ".yml")) or os.path.exists(p):
        return p
    path = os.path.join(CONFIG_DIR, p + ".yaml")
    if not os.path.exists(path):
        raise ConfigError(f"unknown DWNet config {p!r}; shipped configs: {', '.join(config_names())}")
    return path


def load_config(name_or_path=None, opts=(), freeze=True):
    """The official defaults, then the YAML file (a path or a shipped config name, ``BASE`` parents first),
    then ``opts`` (``KEY VALUE ...``). Unknown keys and wrong types are one :class:`ConfigError` naming them."""
    path = config_path(name_or_path) if name_or_path else None
    return _load_config(path, defaults=_C, opts=opts, freeze=freeze, base_key=BASE_KEY)


def update_config(config, args):
    """The official ``update_config(config, args)``, in place: ``args.cfg`` (with its ``BASE`` parents), then
    ``args.opts``, then the flags of :data:`FLAG_KEYS` whose value is truthy, then ``--data-set``, ``--epoch``
    (when not 300, as officially), the local rank, and ``OUTPUT = <output>/<MODEL.NAME>/<TAG>``. Frozen at the
    end. ``--cfg`` may also name a shipped config (``dwnet_tiny_patch4_window7_224``). Bad files, keys or values
    raise :class:`ConfigError` naming them."""
    if getattr(args, "cfg", None):
        args = argparse.Namespace(**{**vars(args), "cfg": config_path(args.cfg)})
    _update_config(config, args, flag_keys=FLAG_KEYS, base_key=BASE_KEY)
    config.defrost()
    data_set = getattr(args, "data_set", None)
    if data_set:
        config.DATA.DATASET = DATA_SETS[data_set]
    epoch = getattr(args, "epoch", None)
    if epoch is not None and epoch != 300:
        config.TRAIN.EPOCHS = int(epoch)
    local_rank = getattr(args, "local_rank", None)
    if local_rank is not None and local_rank >= 0:
        config.LOCAL_RANK = int(local_rank)
    config.OUTPUT = os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)
    config.freeze()
    return config


def get_config(args):
    """The official entry point: the defaults updated from ``main.py``'s command line (:func:`update_config`)."""
    return update_config(get_defaults(), args)
