"""torchvision detection with the rlanet backbone (``rlanet.create_backbone('RLA_ResNet')``): an FPN, then
torchvision's ``FasterRCNN`` / ``MaskRCNN`` (:mod:`common.detection`)::

    model = rlanet.detection.fasterrcnn(num_classes=91, pretrained_backbone='pretrained/backbone.pth')

The backbone defaults to the official detection configuration, ``RLA_ResNet(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')``;
``backbone_kwargs`` override it. ``pretrained_backbone``: a checkpoint loaded through the backbone's
``init_weights`` (reported; a classification checkpoint is best converted first with
``python -m rlanet.tools.convert_to_det``); without it the backbone gets its official init.

Demo (CPU, about a minute): train a small detector briefly on the digits COCO set and print the COCO table::

    python -m rlanet.detection --demo [--arch maskrcnn] [--iters 60]
"""
import sys

from common.detection import PaperDetection

__all__ = ["BACKBONE", "BACKBONE_KWARGS", "backbone", "fasterrcnn", "maskrcnn", "main"]

BACKBONE = "RLA_ResNet"
#: the official detection configuration of the backbone
BACKBONE_KWARGS = dict(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')

_entry = PaperDetection("rlanet", BACKBONE, BACKBONE_KWARGS)
backbone, fasterrcnn, maskrcnn, main = _entry.backbone, _entry.fasterrcnn, _entry.maskrcnn, _entry.main

if __name__ == "__main__":
    sys.exit(main())
