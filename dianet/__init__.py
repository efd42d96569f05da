"""DIANet (Dense-and-Implicit Attention Network, AAAI 2020): CIFAR models, key-compatible
with the official checkpoints. ``create_model('dia_resnet', depth=164, num_classes=100,
block_name='bottleneck')``; ``list_models()`` gives the names."""
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
    list_models,
)

__all__ = [
    "CIFAR_MEAN", "CIFAR_STD", "REGISTRY", "DIAResNet", "DIAPreResNet", "DIAWideResNet",
    "DIAResNeXt", "FCShareResNet", "DIALSTMCell", "DIAStage", "SharedFCStage", "create_model",
    "list_models", "dia_resnet", "dia_preresnet", "dia_wrn", "dia_resnext", "fc_share__dense",
]
