"""DWNet (ICLR 2022, "On the Connection between Local Attention and Dynamic Depth-wise Convolution"):
the static, dynamic and inhomogeneous-dynamic depth-wise networks, key-compatible with the official
checkpoints. ``create_model('dwnet_tiny')`` (a named variant: ``dwnet_{tiny,base}``,
``dynamic_dwnet_{tiny,base}``, ``i_dynamic_dwnet_{tiny,base}``) or ``create_model('dwnet', **official_kwargs)``;
a shipped config by its file name (``create_model('dwnet_tiny_patch4_window7_224')``, or
``build_model(dwnet.config.load_config(path))``); the named variants are also timm models
(``timm.create_model('dwnet_tiny')``)."""
from . import config
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    DWNet,
    build_model,
    create_model,
    get_variant,
    list_models,
    variants,
)

__all__ = ["config", "IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "DWNet", "build_model", "create_model", "get_variant",
           "list_models", "variants"]
