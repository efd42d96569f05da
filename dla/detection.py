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

from common.detection import build_detector, demo_main

__all__ = ["BACKBONE", "BACKBONE_KWARGS", "backbone", "fasterrcnn", "maskrcnn", "main"]

BACKBONE = "ResNet_dlal"
#: the official detection configuration of the backbone
BACKBONE_KWARGS = dict(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True, style='pytorch')


def backbone(backbone_kwargs=None, pretrained_backbone=None):
    """The detection backbone (official configuration, ``backbone_kwargs`` override), initialised: the
    official init, or ``pretrained_backbone`` loaded (its report logged)."""
    from dla import create_backbone

    net = create_backbone(BACKBONE, **{**BACKBONE_KWARGS, **(backbone_kwargs or {}), "pretrained": pretrained_backbone})
    net.init_weights()
    return net


def fasterrcnn(num_classes=91, backbone_kwargs=None, pretrained_backbone=None, **kwargs):
    """torchvision ``FasterRCNN`` on the backbone + FPN; ``kwargs``: :func:`common.detection.build_detector`'s."""
    return build_detector("fasterrcnn", backbone(backbone_kwargs, pretrained_backbone), num_classes, **kwargs)


def maskrcnn(num_classes=91, backbone_kwargs=None, pretrained_backbone=None, **kwargs):
    """torchvision ``MaskRCNN`` on the backbone + FPN; ``kwargs``: :func:`common.detection.build_detector`'s."""
    return build_detector("maskrcnn", backbone(backbone_kwargs, pretrained_backbone), num_classes, **kwargs)


def main(argv=None):
    return demo_main(argv, prog="python -m dla.detection", backbone="dla:ResNet_dlal")


if __name__ == "__main__":
    sys.exit(main())
