"""COCO box evaluation with pycocotools, usable from several processes: :mod:`common.coco_eval` (shared with
the torchvision detection of :mod:`common.detection`)."""
from common.coco_eval import STAT_NAMES, CocoEvaluator, convert_to_xywh

__all__ = ["CocoEvaluator", "convert_to_xywh", "STAT_NAMES"]
