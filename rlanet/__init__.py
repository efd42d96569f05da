"""RLA-Net (Recurrence along Depth, NeurIPS 2021): RLA-ResNet / RLA-ResNeXt / (ds)RLA-MobileNetV2 and the
official baselines, key-compatible with the official checkpoints. ``create_model('rla_resnet50')`` builds a
variant of the official registry by name; ``variants()`` lists them, ``list_models()`` the constructors."""
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

__all__ = ["REGISTRY", "RLABottleneck", "RLAResNet", "RLAMobileNetV2", "create_model", "list_models", "variants",
           "get_variant"]
