"""The digits detection demo set in COCO format (:mod:`common.demo_coco`, shared with the torchvision
detection demos of the other subprojects).

Usage::

    python -m dacdetr.datasets.demo --out datasets/coco_demo
"""
from common.demo_coco import DEMO_CATEGORIES, build_demo_coco
from common.demo_coco import main as _main

__all__ = ["build_demo_coco", "DEMO_CATEGORIES", "DEMO_COMMAND", "main"]

DEMO_COMMAND = "python -m dacdetr.datasets.demo --out datasets/coco_demo"


def main(argv=None):
    return _main(argv, prog="python -m dacdetr.datasets.demo")


if __name__ == "__main__":
    main()
