"""mmsegmentation 1.x plugin: registers ``DWNet`` (:func:`dwnet.create_backbone`) in ``mmseg.registry.MODELS``.

In a config::

    custom_imports = dict(imports=['dwnet.mmseg'], allow_failed_imports=False)
    model = dict(backbone=dict(type='DWNet', embed_dim=96, depths=[2, 2, 6, 2], window_size=7, drop_path_rate=0.2,
                               dynamic=False, pretrained='dwnet_tiny_224.pth'))

The registered class is the plain-PyTorch backbone (:class:`dwnet.models.det.DWNet`) as an mmengine
``BaseModule``: same arguments, keys and outputs (:mod:`common.openmmlab`). The papers' configs are in
``dwnet/configs/mmseg/``.
"""
from common.openmmlab import register_backbone

from . import create_backbone

__all__ = ["DWNet"]

DWNet = register_backbone(create_backbone, "DWNet", "mmseg", __name__)
