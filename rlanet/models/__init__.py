"""RLA-Net models (Zhao, Fang, Li, NeurIPS 2021): the official registry's names as named variants.

Constructors are registered under the official class names (``RLA_ResNet``, ``RLA_MobileNetV2``,
``dsRLA_MobileNetV2``, ``ResNet``, ``ResNet_k``, ``MobileNetV2``); each official builder of
``models/__init__`` (``rla_resnet50``, ``dsrla_mobilenetv2_k12``, ``resnet50_se``, ...) is a named variant,
declared once below with its arguments and complete ``pretrained_cfg``. The RLA variants (``paper=True``)
are registered in timm as well.
"""
from common.timm_compat import register_registry

from ._registry import REGISTRY, StageFeatures, imagenet_cfg
from .mobilenetv2 import InvertedResidual, MobileNetV2, MobileNetV2Base
from .resnet import Bottleneck, ResNet, ResNet_k, ResNetBase
from .mobilenetv2_rla import RLAInvertedResidual, RLAMobileNetV2, RLA_MobileNetV2, dsRLA_MobileNetV2
from .resnet_rla import RLABottleneck, RLAResNet, RLA_ResNet

__all__ = [
    "REGISTRY", "StageFeatures", "imagenet_cfg", "RLABottleneck", "RLAResNet", "RLA_ResNet",
    "RLAInvertedResidual", "RLAMobileNetV2", "RLA_MobileNetV2", "dsRLA_MobileNetV2", "Bottleneck", "ResNetBase",
    "ResNet", "ResNet_k", "InvertedResidual", "MobileNetV2Base", "MobileNetV2", "create_model", "list_models",
    "variants", "get_variant", "ECA_K",
]

#: the official ResNet ECA kernel sizes by stage
ECA_K = (5, 5, 5, 7)
_DEPTH = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
_MBV2 = dict(first_conv="conv1.0", classifier="classifier.1")
_NEXT = dict(groups=32, width_per_group=4)


def _table():
    """(name, constructor, kwargs, cfg overrides, paper) in the official registry's order."""
    rows = []
    for d in (50, 101, 152):
        rows += [(f"rla_resnet{d}", "RLA_ResNet", dict(layers=_DEPTH[d]), {}, True),
                 (f"rla_resnet{d}_eca", "RLA_ResNet", dict(layers=_DEPTH[d], ECA=ECA_K), {}, True)]
    for d in (50, 101):
        base = dict(layers=_DEPTH[d], **_NEXT)
        rows += [(f"rla_resnext{d}_32x4d", "RLA_ResNet", base, {}, True),
                 (f"rla_resnext{d}_32x4d_se", "RLA_ResNet", dict(base, SE=True), {}, True),
                 (f"rla_resnext{d}_32x4d_eca", "RLA_ResNet", dict(base, ECA=ECA_K), {}, True)]
    for prefix, ctor in (("rla", "RLA_MobileNetV2"), ("dsrla", "dsRLA_MobileNetV2")):
        rows += [(f"{prefix}_mobilenetv2", ctor, dict(rla_channel=32), _MBV2, True),
                 (f"{prefix}_mobilenetv2_eca", ctor, dict(rla_channel=32, ECA=True), _MBV2, True)]
        for k in (6, 12, 24, 32):
            rows += [(f"{prefix}_mobilenetv2_k{k}", ctor, dict(rla_channel=k), _MBV2, True),
                     (f"{prefix}_mobilenetv2_k{k}_eca", ctor, dict(rla_channel=k, ECA=True), _MBV2, True)]
    # the baselines the official registry exports (not in timm: they are not this paper's models)
    for d in (50, 101, 152):
        rows += [(f"resnet{d}", "ResNet", dict(layers=_DEPTH[d]), {}, False),
                 (f"resnet{d}_se", "ResNet", dict(layers=_DEPTH[d], SE=True), {}, False),
                 (f"resnet{d}_eca", "ResNet", dict(layers=_DEPTH[d], ECA=ECA_K), {}, False)]
    for d in (50, 101):
        base = dict(layers=_DEPTH[d], **_NEXT)
        rows += [(f"resnext{d}_32x4d", "ResNet", base, {}, False),
                 (f"resnext{d}_32x4d_se", "ResNet", dict(base, SE=True), {}, False),
                 (f"resnext{d}_32x4d_eca", "ResNet", dict(base, ECA=ECA_K), {}, False)]
    mbv2 = dict(first_conv="features.0.0", classifier="classifier.1")
    rows += [("mobilenet_v2", "MobileNetV2", dict(width_mult=1.0), mbv2, False),
             ("mobilenetv2_eca", "MobileNetV2", dict(ECA=True), mbv2, False),
             ("resnet50_k", "ResNet_k", dict(layers=_DEPTH[50], channel_k=32), {}, False)]
    # the paper's ablations (official models/resnet_rla_*.py): options of RLA_ResNet
    r50, r101 = dict(layers=_DEPTH[50]), dict(layers=_DEPTH[101])
    rows += [(name, "RLA_ResNet", kw, {}, False) for name, kw in (
        ("rlav1_resnet50", dict(r50, head="tanh")),
        ("rlav1_resnet50_eca", dict(r50, head="tanh", ECA=ECA_K)),
        ("rlav2_resnet50", dict(r50, update="add_after")),
        ("rlav3_resnet50", dict(r50, conv_out_input="output")),  # conv_out reads x: the default's tensor
        ("rlav4_resnet50", dict(r50, update="add_after", conv_out_input="output")),
        ("rlav5_resnet50", dict(r50, conv_out_input="identity")),
        ("rlav6_resnet50", dict(r50, update="add_after", conv_out_input="identity")),
        ("rlarh_resnet50", dict(r50, feed_h=False)),
        ("rlaus_resnet50", dict(r50, unshared=True, conv_out_input="branch")),
        ("rlaus_resnet101", dict(r101, unshared=True, conv_out_input="branch")),
        ("rlav1p_resnet50", dict(r50, update="post", head="none")),
        ("rlalstm_resnet50", dict(r50, update="lstm", head="none")),
        ("rlagru_resnet50", dict(r50, update="gru", head="none")),
        ("rlagru_resnet50_eca", dict(r50, update="gru", head="none", ECA=ECA_K)),
        ("rlagru_resnet101", dict(r101, update="gru", head="none")),
        ("rlagru_resnet101_eca", dict(r101, update="gru", head="none", ECA=ECA_K)),
    )]
    return rows


for _name, _ctor, _kw, _cfg_kw, _paper in _table():
    REGISTRY.add_variant(_name, _ctor, _kw, pretrained_cfg=imagenet_cfg(**_cfg_kw), paper=_paper)
del _name, _ctor, _kw, _cfg_kw, _paper


def create_model(name, **kwargs):
    """Build a named variant by its official name, ``create_model('rla_resnet50')``,
    ``create_model('rla_resnet50_eca', rla_channel=16, num_classes=10)`` (``kwargs`` override the variant's:
    the official builder arguments ``rla_channel``, ``k_size`` / ``eca`` are accepted), or a constructor,
    ``create_model('RLA_ResNet', layers=(3, 4, 6, 3))``. ``features_only=True`` (with ``out_indices``)
    returns the stage maps."""
    return REGISTRY.create(name, **kwargs)


def list_models(pattern="*"):
    """The registered constructors (official class names)."""
    return REGISTRY.list_models(pattern)


def variants(pattern="*", *, paper=None):
    """The named variants (:class:`common.registry.Variant`), in the official registry's order."""
    return REGISTRY.variants(pattern, paper=paper)


def get_variant(name):
    return REGISTRY.get_variant(name)


# The RLA variants in timm: timm.create_model('rla_resnet50') once rlanet is imported.
register_registry(REGISTRY)
