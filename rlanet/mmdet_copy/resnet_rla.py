# The official way, with mmdetection / mmsegmentation's own file layout: copy this file into
#     mmdet/models/backbones/resnet_rla.py
# of an OpenMMLab checkout and add to mmdet/models/backbones/__init__.py:
#     from .resnet_rla import RLA_ResNet
# (and 'RLA_ResNet' to its __all__). The model code is not copied: it comes from the installed layerzoo package
# (pip install -e <layerzoo>), whose plugin module registers RLA_ResNet in mmdet's MODELS. A config can instead load
# the plugin without copying anything: custom_imports = dict(imports=['rlanet.mmdet'], allow_failed_imports=False).
from rlanet.mmdet import RLA_ResNet  # noqa: F401  (registers RLA_ResNet in mmdet.registry.MODELS)

__all__ = ['RLA_ResNet']
