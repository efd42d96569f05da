"""DLA models: CIFAR (:mod:`dla.models.cifar`) and ImageNet (:mod:`dla.models.imagenet`), registered under
their official names in :data:`REGISTRY`, with the named CIFAR variants (``dla_l110``, ...; the paper's
``dla_b110`` / ``dla_l110`` also in timm, as are ``resnet50_dla_l`` / ``resnet101_dla_l``)."""
from common.timm_compat import register_registry, register_timm

from . import cifar, imagenet  # noqa: F401  (registers the constructors)
from ._registry import CIFAR_MEAN, CIFAR_STD, REGISTRY, imagenet_cfg
from .cifar import CIFAR_VARIANTS, CifarLayerAttentionNet, CifarResNet
from .imagenet import ResNet, ResNetDLAL

__all__ = ["REGISTRY", "CIFAR_MEAN", "CIFAR_STD", "CIFAR_VARIANTS", "CifarResNet", "CifarLayerAttentionNet",
           "ResNet", "ResNetDLAL", "create_model", "list_models", "default_cfg", "variants", "get_variant"]


def create_model(name, **kwargs):
    """Build the model registered as ``name`` (an official constructor name) with its official keyword
    arguments, e.g. ``create_model('dla_l', num_classes=100, depth=110, block_name='bottleneck',
    drop_path=0.2)`` or ``create_model('resnet50_dla_l', drop_path=0.2)``, or a named variant,
    ``create_model('dla_l110')`` (``kwargs`` override the variant's). ``features_only=True`` (with
    ``out_indices``) returns the stage maps."""
    return REGISTRY.create(name, **kwargs)


def default_cfg(name):
    """The default (timm-style) pretrained_cfg of ``name``."""
    return REGISTRY.default_cfg(name)


list_models = REGISTRY.list_models  # the constructor names (shell-pattern filter)
variants = REGISTRY.variants  # the named variants, in declaration order
get_variant = REGISTRY.get_variant


# The paper's models in timm once dla is imported: the CIFAR variants (timm.create_model('dla_l110')) and
# the ImageNet DLA models under their official names (the plain baselines stay in dla's namespace).
register_registry(REGISTRY)
for _name in ("resnet50_dla_l", "resnet101_dla_l"):
    register_timm(_name, REGISTRY.get(_name), imagenet_cfg(), paper=REGISTRY.name)
del _name
