"""mmdetection 3.x plugin: registers ``ResNet_dlal`` (:func:`dla.create_backbone`) in ``mmdet.registry.MODELS``.

In a config::

    custom_imports = dict(imports=['dla.mmdet'], allow_failed_imports=False)
    model = dict(backbone=dict(type='ResNet_dlal', layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True,
                               style='pytorch', init_cfg=dict(type='Pretrained', checkpoint='r50_dla.pth.tar')))

The registered class is the plain-PyTorch backbone (:class:`dla.models.det.ResNet_dlal`) as an mmengine
``BaseModule``: same arguments, keys and outputs (:mod:`common.openmmlab`). The papers' configs are in
``dla/configs/mmdet/``.
"""
from common.openmmlab import register_backbone

from . import create_backbone

__all__ = ["ResNet_dlal"]

ResNet_dlal = register_backbone(create_backbone, "ResNet_dlal", "mmdet", __name__)
