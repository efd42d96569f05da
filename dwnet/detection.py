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

from common.detection import build_detector, demo_main

__all__ = ["BACKBONE", "BACKBONE_KWARGS", "backbone", "fasterrcnn", "maskrcnn", "main"]

BACKBONE = "DWNet"
#: the official detection configuration of the backbone
BACKBONE_KWARGS = dict(embed_dim=96, depths=[2, 2, 6, 2], window_size=7, mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True, out_indices=(0, 1, 2, 3), use_checkpoint=False, dynamic=False)


def backbone(backbone_kwargs=None, pretrained_backbone=None):
    """The detection backbone (official configuration, ``backbone_kwargs`` override), initialised: the
    official init, or ``pretrained_backbone`` loaded (its report logged)."""
    from dwnet import create_backbone

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
    return demo_main(argv, prog="python -m dwnet.detection", backbone="dwnet:DWNet")


if __name__ == "__main__":
    sys.exit(main())
