"""RLA-Net (Recurrence along Depth, NeurIPS 2021): RLA-ResNet / RLA-ResNeXt / (ds)RLA-MobileNetV2 and the
official baselines, key-compatible with the official checkpoints. ``create_model('rla_resnet50')`` builds a
variant of the official registry by name; ``variants()`` lists them, ``list_models()`` the constructors. ``create_backbone('RLA_ResNet', layers=[3, 4, 6,
3], frozen_stages=1, norm_eval=True, style='pytorch')`` (``ECA=[5, 5, 5, 7]``) builds the detection backbone
(:mod:`rlanet.models.det`) by its official class name and arguments."""
from common.backbone import backbone_factory as _backbone_factory

from .models import (
    REGISTRY,
    RLABottleneck,
    RLAMobileNetV2,
    RLAResNet,
    create_model,
    get_variant,
    list_models,
    variants,
)
from .models.det import RLA_ResNet as _DetRLA_ResNet

__all__ = ["REGISTRY", "RLABottleneck", "RLAResNet", "RLAMobileNetV2", "create_model", "create_backbone", "list_models",
           "variants", "get_variant"]

create_backbone = _backbone_factory("rlanet", {"RLA_ResNet": _DetRLA_ResNet})
