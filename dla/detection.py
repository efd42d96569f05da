"""torchvision detection with the dla backbone (``dla.create_backbone('ResNet_dlal')``): an FPN, then
torchvision's ``FasterRCNN`` / ``MaskRCNN`` (:mod:`common.detection`)::

    model = dla.detection.fasterrcnn(num_classes=91, pretrained_backbone='pretrained/backbone.pth')

The backbone defaults to the official detection configuration, ``ResNet_dlal(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')``;
``backbone_kwargs`` override it. ``pretrained_backbone``: a checkpoint loaded through the backbone's
``init_weights`` (reported; a classification checkpoint is best converted first with
``python -m dla.tools.convert_to_det``); without it the backbone gets its official init.

Demo (CPU, about a minute): train a small detector briefly on the digits COCO set and print the COCO table::

    python -m dla.detection --demo [--arch maskrcnn] [--iters 60]
"""
import sys

from common.detection import PaperDetection

__all__ = ["BACKBONE", "BACKBONE_KWARGS", "backbone", "fasterrcnn", "maskrcnn", "main"]

BACKBONE = "ResNet_dlal"
#: the official detection configuration of the backbone
BACKBONE_KWARGS = dict(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')

_entry = PaperDetection("dla", BACKBONE, BACKBONE_KWARGS)
backbone, fasterrcnn, maskrcnn, main = _entry.backbone, _entry.fasterrcnn, _entry.maskrcnn, _entry.main

if __name__ == "__main__":
    sys.exit(main())
