"""DWNet models: :mod:`dwnet.models.dwnet` (the network, its constructor and the named variants) and
:mod:`dwnet.models.ops` (the dynamic depth-wise convolutions in plain PyTorch), :mod:`dwnet.models.build`
(``build_model(config)`` from a :mod:`dwnet.config` node)."""
from .dwnet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    REGISTRY,
    BasicLayer,
    DWBlock,
    DWNet,
    DynamicDWConv,
    IDynamicDWConv,
    SpatialBlock,
    create_model,
    get_variant,
    list_models,
    variants,
)
from .build import MODEL_TYPES, build_model, model_kwargs
from .ops import dynamic_dwconv, idynamic_dwconv

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "REGISTRY", "BasicLayer", "DWBlock", "DWNet", "DynamicDWConv",
           "IDynamicDWConv", "SpatialBlock", "create_model", "get_variant", "list_models", "variants",
           "dynamic_dwconv", "idynamic_dwconv", "MODEL_TYPES", "build_model", "model_kwargs"]
