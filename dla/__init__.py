"""DLA (Strengthening Layer Interaction via Dynamic Layer Attention, IJCAI 2024): the CIFAR and ImageNet
models of the official code, key-compatible with its checkpoints. ``create_model('dla_l', num_classes=100,
depth=110, block_name='bottleneck', drop_path=0.2)``; ``list_models()`` gives the names."""
from .models import (CIFAR_MEAN, CIFAR_STD, CIFAR_VARIANTS, REGISTRY, CifarLayerAttentionNet, CifarResNet, ResNet,
                     ResNetDLAL, create_model, default_cfg, get_variant, list_models, variants)

__all__ = ["CIFAR_MEAN", "CIFAR_STD", "CIFAR_VARIANTS", "REGISTRY", "CifarResNet", "CifarLayerAttentionNet",
           "ResNet", "ResNetDLAL", "create_model", "default_cfg", "list_models", "variants", "get_variant"]
