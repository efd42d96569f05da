"""DIANet (Dense-and-Implicit Attention Network, AAAI 2020): CIFAR models, key-compatible
with the official checkpoints. ``create_model('dia_resnet', depth=164, num_classes=100,
block_name='bottleneck')`` or, by the variant's name, ``create_model('dia_resnet164')``; ``list_models()``
gives the constructor names, ``variants()`` / ``get_variant(name)`` the named variants."""
from .models import (
    CIFAR_MEAN,
    CIFAR_STD,
    REGISTRY,
    DIAResNet,
    DIAPreResNet,
    DIAWideResNet,
    DIAResNeXt,
    FCShareResNet,
    DIALSTMCell,
    DIAStage,
    SharedFCStage,
    create_model,
    dia_preresnet,
    dia_resnet,
    dia_resnext,
    dia_wrn,
    fc_share__dense,
    get_variant,
    list_models,
    variants,
)

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "REGISTRY", "DIAResNet", "DIAPreResNet", "DIAWideResNet",
    "DIAResNeXt", "FCShareResNet", "DIALSTMCell", "DIAStage", "SharedFCStage", "create_model",
    "list_models", "variants", "get_variant", "dia_resnet", "dia_preresnet", "dia_wrn", "dia_resnext", "fc_share__dense",
]
