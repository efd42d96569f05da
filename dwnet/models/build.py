"""``build_model(config)``: the official ``models/build.py`` on a yacs config (:mod:`dwnet.config`)."""
from common.config import ConfigError

from .dwnet import REGISTRY

__all__ = ["MODEL_TYPES", "model_kwargs", "build_model"]

#: MODEL.TYPE values the official build_model accepts (all three build DWNet)
MODEL_TYPES = ("dwnet", "ddwnet", "iddwnet")


def model_kwargs(config):
    """The ``DWNet(...)`` keyword arguments the official ``build_model`` passes for ``config``
    (``inhomogeneous`` / ``inhomo_heads`` only for ``iddwnet``, as officially)."""
    model_type = config.MODEL.TYPE
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"MODEL.TYPE {model_type!r} is not a DWNet model type; choose one of: "
                          f"{', '.join(MODEL_TYPES)}")
    d = config.MODEL.DWNET
    kw = dict(img_size=config.DATA.IMG_SIZE, patch_size=d.PATCH_SIZE, in_chans=d.IN_CHANS,
              num_classes=config.MODEL.NUM_CLASSES, embed_dim=d.EMBED_DIM, depths=list(d.DEPTHS),
              window_size=d.WINDOW_SIZE, mlp_ratio=d.MLP_RATIO, drop_rate=config.MODEL.DROP_RATE,
              drop_path_rate=config.MODEL.DROP_PATH_RATE, ape=d.APE, patch_norm=d.PATCH_NORM,
              use_checkpoint=config.TRAIN.USE_CHECKPOINT, dynamic=d.DYNAMIC)
    if model_type == "iddwnet":
        kw.update(inhomogeneous=d.INHOMO, inhomo_heads=list(d.INHOMO_HEADS))
    return kw


def build_model(config, **overrides):
    """The model of ``config`` (a CfgNode with the :mod:`dwnet.config` keys); ``overrides`` replace
    constructor arguments (e.g. ``features_only=True``)."""
    return REGISTRY.create("dwnet", **{**model_kwargs(config), **overrides})
