"""The yacs config of DWNet's ``main.py``: the official keys and defaults, as data.

The defaults are those of the official ``config.py`` (a fork of Swin-Transformer's). A run's config is these
defaults, then the ``--cfg`` YAML file with its ``BASE:`` parents, then ``--opts KEY VALUE ...``, then the
command-line flags, as officially (:func:`update_config`); every YAML file is read safely through
:mod:`common.config` (plain YAML only, never yacs's own loader). Keys that :mod:`dwnet.main` reads and that the
official code has too keep their meaning; the few official keys without effect are marked below.

``get_config(args)`` is the official entry point; ``load(path, opts)`` builds a config without a command line::

    from dwnet.config import load
    cfg = load("dwnet/configs/dwnet_tiny_patch4_window7_224.yaml", ["DATA.IMG_SIZE", "32"])
"""
import os

from common import config as cc
from common.config import CfgNode as CN

__all__ = ["_C", "BASE_KEY", "FLAG_KEYS", "DATA_SETS", "AMP_LEVELS", "get_default_config", "update_config",
           "get_config", "load"]

BASE_KEY = "BASE"  # the Swin-style parent list (``BASE: ['']`` in the defaults, ``BASE: [base.yaml]`` in files)

# ``main.py`` flag (argparse dest) -> config key, applied when the flag's value is truthy (Swin's rule)
FLAG_KEYS = dict(cc.SWIN_FLAG_KEYS)

# ``--data-set`` -> DATA.DATASET
DATA_SETS = {"IMNET": "imagenet", "CIFAR": "cifar"}

AMP_LEVELS = ("O0", "O1", "O2")

_C = CN()
_C.BASE = [""]

# ----------------------------------------------------------------------------- data
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128             # per process
_C.DATA.DATA_PATH = ""
_C.DATA.DATASET = "imagenet"         # 'imagenet' (ImageFolder train/ + val/) or 'cifar' (CIFAR-10 pickles)
_C.DATA.IMG_SIZE = 224
_C.DATA.INTERPOLATION = "bicubic"
_C.DATA.ZIP_MODE = False             # official: only changes the sampler, never the dataset; accepted, no effect
_C.DATA.CACHE_MODE = "part"          # likewise
_C.DATA.PIN_MEMORY = True
_C.DATA.NUM_WORKERS = 8

# ----------------------------------------------------------------------------- model
_C.MODEL = CN()
_C.MODEL.TYPE = "swin"               # dwnet | ddwnet | iddwnet (the official default names no DWNet type)
_C.MODEL.NAME = "swin_tiny_patch4_window7_224"
_C.MODEL.RESUME = ""
_C.MODEL.NUM_CLASSES = 1000          # set from the data set (1000 ImageNet, 10 CIFAR and the digits demo)
_C.MODEL.DROP_RATE = 0.0
_C.MODEL.DROP_PATH_RATE = 0.1
_C.MODEL.LABEL_SMOOTHING = 0.1

_C.MODEL.DWNET = CN()
_C.MODEL.DWNET.PATCH_SIZE = 4
_C.MODEL.DWNET.IN_CHANS = 3
_C.MODEL.DWNET.EMBED_DIM = 96
_C.MODEL.DWNET.DEPTHS = [2, 2, 6, 2]
_C.MODEL.DWNET.WINDOW_SIZE = 7       # the depth-wise kernel size
_C.MODEL.DWNET.MLP_RATIO = 4.0
_C.MODEL.DWNET.APE = False
_C.MODEL.DWNET.PATCH_NORM = True
_C.MODEL.DWNET.CONV_TYPE = "v1"      # official: unused
_C.MODEL.DWNET.DYNAMIC = False
_C.MODEL.DWNET.INHOMO = False
_C.MODEL.DWNET.INHOMO_HEADS = [4, 8, 16, 32]  # channels per kernel group, per stage

# ----------------------------------------------------------------------------- training
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0
_C.TRAIN.EPOCHS = 300
_C.TRAIN.WARMUP_EPOCHS = 20
_C.TRAIN.WEIGHT_DECAY = 0.05
_C.TRAIN.BASE_LR = 5e-4              # for a total batch of 512; main.py scales it linearly
_C.TRAIN.WARMUP_LR = 5e-7
_C.TRAIN.MIN_LR = 5e-6
_C.TRAIN.CLIP_GRAD = 5.0
_C.TRAIN.AUTO_RESUME = False
_C.TRAIN.ACCUMULATION_STEPS = 0
_C.TRAIN.USE_CHECKPOINT = False

_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1

_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = "adamw"
_C.TRAIN.OPTIMIZER.EPS = 1e-8
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9

# ----------------------------------------------------------------------------- augmentation
_C.AUG = CN()
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

# ----------------------------------------------------------------------------- testing
_C.TEST = CN()
_C.TEST.CROP = True                  # Resize(img_size / 0.875) + CenterCrop; False: Resize to img_size

# ----------------------------------------------------------------------------- misc
_C.AMP_OPT_LEVEL = ""                # O0 = fp32; O1 / O2 = mixed precision (torch.amp; apex in the official code)
_C.OUTPUT = ""
_C.TAG = "default"
_C.SAVE_FREQ = 1
_C.PRINT_FREQ = 10
_C.SEED = 0
_C.EVAL_MODE = False
_C.THROUGHPUT_MODE = False
_C.LOCAL_RANK = 0


def get_default_config():
    """A clone of the defaults (not frozen)."""
    return _C.clone()


def update_config(config, args):
    """The official ``update_config(config, args)``, in place: ``args.cfg`` (with its ``BASE:`` parents), then
    ``args.opts``, then the flags of :data:`FLAG_KEYS` whose value is truthy, then ``--data-set``, ``--epoch``
    (when not 300, as officially), the local rank, and ``OUTPUT = <output>/<MODEL.NAME>/<TAG>``. Frozen at the
    end. Bad files, keys or values raise :class:`common.config.ConfigError` naming them."""
    cc.update_config(config, args, flag_keys=FLAG_KEYS, base_key=BASE_KEY)
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
    """The official entry point: the defaults updated from the command line (:func:`update_config`), frozen."""
    return update_config(get_default_config(), args)


def load(path=None, opts=()):
    """The defaults, then the YAML file ``path`` (with its ``BASE:`` parents), then ``opts``; frozen. Also reads
    back a run's ``config.json`` (the resolved config, as YAML text)."""
    return cc.load_config(path, defaults=_C, opts=opts, base_key=BASE_KEY)
