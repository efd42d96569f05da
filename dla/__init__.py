"""DLA (Strengthening Layer Interaction via Dynamic Layer Attention, IJCAI 2024): the CIFAR and ImageNet
models of the official code, key-compatible with its checkpoints. ``create_model('dla_l', num_classes=100,
depth=110, block_name='bottleneck', drop_path=0.2)``; ``list_models()`` gives the names.
``create_backbone('ResNet_dlal', layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')``
builds the detection backbone (:mod:`dla.models.det`) by its official class name and arguments."""
from common.backbone import backbone_factory as _backbone_factory

from .models import (CIFAR_MEAN, CIFAR_STD, CIFAR_VARIANTS, REGISTRY, CifarLayerAttentionNet, CifarResNet, ResNet,
                     ResNetDLAL, create_model, default_cfg, get_variant, list_models, variants)
from .models.det import ResNet_dlal

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CIFAR_VARIANTS", "REGISTRY", "CifarResNet", "CifarLayerAttentionNet",
           "ResNet", "ResNetDLAL", "ResNet_dlal", "create_backbone", "create_model", "default_cfg", "list_models",
           "variants", "get_variant"]

create_backbone = _backbone_factory("dla", {"ResNet_dlal": ResNet_dlal})
