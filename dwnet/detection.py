"""torchvision detection with the dwnet backbone (``dwnet.create_backbone('DWNet')``): an FPN, then
torchvision's ``FasterRCNN`` / ``MaskRCNN`` (:mod:`common.detection`)::

    model = dwnet.detection.fasterrcnn(num_classes=91, pretrained_backbone='pretrained/backbone.pth')

The backbone defaults to the official detection configuration, ``DWNet(embed_dim=96, depths=[2, 2, 6, 2], window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False, dynamic=False)``;
``backbone_kwargs`` override it. ``pretrained_backbone``: a checkpoint loaded through the backbone's
``init_weights`` (reported; a classification checkpoint is best converted first with
``python -m dwnet.tools.convert_to_det``); without it the backbone gets its official init.

Demo (CPU, about a minute): train a small detector briefly on the digits COCO set and print the COCO table::

    python -m dwnet.detection --demo [--arch maskrcnn] [--iters 60]
"""
import sys

from common.detection import PaperDetection

__all__ = ["BACKBONE", "BACKBONE_KWARGS", "backbone", "fasterrcnn", "maskrcnn", "main"]

BACKBONE = "DWNet"
#: the official detection configuration of the backbone
BACKBONE_KWARGS = dict(embed_dim=96, depths=[2, 2, 6, 2], window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False, dynamic=False)

_entry = PaperDetection("dwnet", BACKBONE, BACKBONE_KWARGS)
backbone, fasterrcnn, maskrcnn, main = _entry.backbone, _entry.fasterrcnn, _entry.maskrcnn, _entry.main

if __name__ == "__main__":
    sys.exit(main())
