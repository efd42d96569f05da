"""DWNet (ICLR 2022, "On the Connection between Local Attention and Dynamic Depth-wise Convolution"):
the static, dynamic and inhomogeneous-dynamic depth-wise networks, key-compatible with the official
checkpoints. ``create_model('dwnet_tiny')`` (a named variant: ``dwnet_{tiny,base}``,
``dynamic_dwnet_{tiny,base}``, ``i_dynamic_dwnet_{tiny,base}``) or ``create_model('dwnet', **official_kwargs)``;
a shipped config by its file name (``create_model('dwnet_tiny_patch4_window7_224')``, or
``build_model(dwnet.config.load_config(path))``); the named variants are also timm models
(``timm.create_model('dwnet_tiny')``). ``create_backbone('DWNet', embed_dim=96, depths=[2, 2, 6, 2], ...,
dynamic=False)`` builds the detection / segmentation backbone (:mod:`dwnet.models.det`) by its official class
name and arguments."""
from common.backbone import backbone_factory as _backbone_factory

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
from .models.det import DWNet as _DetDWNet

__all__ = ["config", "IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "DWNet", "build_model", "create_backbone", "create_model",
           "get_variant", "list_models", "variants"]

create_backbone = _backbone_factory("dwnet", {"DWNet": _DetDWNet})
