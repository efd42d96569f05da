# The official way, with mmdetection / mmsegmentation's own file layout: copy this file into
#     mmdet/models/backbones/resnet_dlal.py
# of an OpenMMLab checkout and add to mmdet/models/backbones/__init__.py:
#     from .resnet_dlal import ResNet_dlal
# (and 'ResNet_dlal' to its __all__). The model code is not copied: it comes from the installed layerzoo package
# (pip install -e <layerzoo>), whose plugin module registers ResNet_dlal in mmdet's MODELS. A config can instead load
# the plugin without copying anything: custom_imports = dict(imports=['dla.mmdet'], allow_failed_imports=False).
from dla.mmdet import ResNet_dlal  # noqa: F401  (registers ResNet_dlal in mmdet.registry.MODELS)

__all__ = ['ResNet_dlal']
