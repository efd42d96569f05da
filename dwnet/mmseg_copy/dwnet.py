# The official way, with mmdetection / mmsegmentation's own file layout: copy this file into
#     mmseg/models/backbones/dwnet.py
# of an OpenMMLab checkout and add to mmseg/models/backbones/__init__.py:
#     from .dwnet import DWNet
# (and 'DWNet' to its __all__). The model code is not copied: it comes from the installed layerzoo package
# (pip install -e <layerzoo>), whose plugin module registers DWNet in mmseg's MODELS. A config can instead load
# the plugin without copying anything: custom_imports = dict(imports=['dwnet.mmseg'], allow_failed_imports=False).
from dwnet.mmseg import DWNet  # noqa: F401  (registers DWNet in mmseg.registry.MODELS)

__all__ = ['DWNet']
