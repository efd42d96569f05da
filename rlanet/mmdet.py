"""mmdetection 3.x plugin: registers ``RLA_ResNet`` (:func:`rlanet.create_backbone`) in ``mmdet.registry.MODELS``.

In a config::

    custom_imports = dict(imports=['rlanet.mmdet'], allow_failed_imports=False)
    model = dict(backbone=dict(type='RLA_ResNet', layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True,
                               style='pytorch',  # ECA=[5, 5, 5, 7] for ECA-RLA
                               init_cfg=dict(type='Pretrained', checkpoint='resnet50_rla_2283.pth.tar')))

The registered class is the plain-PyTorch backbone (:class:`rlanet.models.det.RLA_ResNet`) as an mmengine
``BaseModule``: same arguments, keys and outputs (:mod:`common.openmmlab`). The papers' configs are in
``rlanet/configs/mmdet/``.
"""
from common.openmmlab import register_backbone

from . import create_backbone

__all__ = ["RLA_ResNet"]

RLA_ResNet = register_backbone(create_backbone, "RLA_ResNet", "mmdet", __name__)
