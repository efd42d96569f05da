"""The DLA model registry (official constructor names) and the CIFAR / ImageNet default configs."""
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common.registry import Registry

__all__ = ["REGISTRY", "CIFAR_MEAN", "CIFAR_STD", "cifar_cfg", "imagenet_cfg"]

REGISTRY = Registry("dla")

# Normalisation of the official cifar.py (the same for CIFAR-10 and CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)

_PAPER = dict(
    license="unspecified (the official code states none; no released weights)",
    paper_name="Strengthening Layer Interaction via Dynamic Layer Attention (IJCAI 2024)",
    paper_ids="arXiv:2406.13392",
    origin_url="https://github.com/tunantu/Dynamic-Layer-Attention",
)


def cifar_cfg(num_classes=100, classifier="fc"):
    """timm pretrained_cfg of a CIFAR model (32x32 input, no released weights: ``url`` is empty)."""
    return dict(url="", num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                crop_mode="center", interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD,
                first_conv="conv1", classifier=classifier, **_PAPER)


def imagenet_cfg(num_classes=1000, classifier="fc"):
    """timm pretrained_cfg of an ImageNet model (train crop 224, test resize 256 + center crop 224)."""
    return dict(url="", num_classes=num_classes, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                crop_mode="center", interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN,
                std=IMAGENET_DEFAULT_STD, first_conv="conv1", classifier=classifier, **_PAPER)
