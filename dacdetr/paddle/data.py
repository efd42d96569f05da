"""COCO detection data of the Paddle port in NumPy / PIL: the same images, targets and official
augmentation as :mod:`dacdetr.datasets` (which works on torch tensors and torchvision), producing arrays.

An item is ``(image, target)``: ``image`` float32 (3, H, W), ImageNet-normalised; ``target`` a dict of
arrays: ``boxes`` float32 (N, 4) cxcywh in [0, 1] of the augmented image, ``labels`` int64 (raw COCO
category ids), ``image_id`` int64 (1,), ``area`` float32, ``iscrowd`` int64, ``orig_size`` / ``size``
int64 [h, w]. Crowd objects and degenerate boxes are dropped, as on the PyTorch side.

The augmentation draws from Python's ``random`` module in the same order as the PyTorch pipeline
(flip, branch, sizes, crop size); only the crop's position differs in its source (``random.randint``
here, ``torch.randint`` in torchvision's ``RandomCrop.get_params``). Resizing is PIL's bilinear
resampling, as torchvision's on PIL images, so a given draw gives the same pixels.
"""
from __future__ import annotations

import contextlib
import io
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from dacdetr.datasets.coco import IMAGENET_MEAN, IMAGENET_STD, OFFICIAL_SCALES, _scaled, check_coco_root
from dacdetr.datasets.transforms import get_size_with_aspect_ratio

__all__ = ["CocoDetection", "build", "make_transforms", "prepare", "hflip", "resize", "crop", "normalize"]

_PER_OBJECT = ("boxes", "labels", "area", "iscrowd")


def prepare(image, image_id, annotations):
    """Raw COCO annotations of one image -> target arrays (absolute xyxy boxes clipped to the image)."""
    w, h = image.size
    anns = [a for a in annotations if a.get("iscrowd", 0) == 0]
    boxes = np.asarray([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])
    return {"boxes": boxes[keep],
            "labels": np.asarray([a["category_id"] for a in anns], np.int64).reshape(-1)[keep],
            "image_id": np.asarray([image_id], np.int64),
            "area": np.asarray([a["area"] for a in anns], np.float32).reshape(-1)[keep],
            "iscrowd": np.asarray([a.get("iscrowd", 0) for a in anns], np.int64).reshape(-1)[keep],
            "orig_size": np.asarray([h, w], np.int64), "size": np.asarray([h, w], np.int64)}


def hflip(image, target):
    w = image.size[0]
    target = dict(target)
    b = target["boxes"]
    target["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    return image.transpose(Image.FLIP_LEFT_RIGHT), target


def resize(image, target, size, max_size=None):
    """Shorter side to ``size`` (longer side capped at ``max_size``); boxes and areas scaled."""
    new_h, new_w = get_size_with_aspect_ratio(image.size, size, max_size)
    out = image.resize((new_w, new_h), Image.BILINEAR)
    rw, rh = float(new_w) / float(image.size[0]), float(new_h) / float(image.size[1])
    target = dict(target)
    target["boxes"] = target["boxes"] * np.asarray([rw, rh, rw, rh], np.float32)
    target["area"] = target["area"] * np.float32(rw * rh)
    target["size"] = np.asarray([new_h, new_w], np.int64)
    return out, target


def crop(image, target, region):
    """Crop ``region = (top, left, height, width)``; boxes shifted and clipped, emptied objects dropped."""
    top, left, height, width = region
    out = image.crop((left, top, left + width, top + height))
    target = dict(target)
    target["size"] = np.asarray([height, width], np.int64)
    corners = (target["boxes"] - np.asarray([left, top, left, top], np.float32)).reshape(-1, 2, 2)
    corners = np.minimum(corners, np.asarray([width, height], np.float32)).clip(min=0)
    target["boxes"] = corners.reshape(-1, 4)
    target["area"] = (corners[:, 1] - corners[:, 0]).prod(axis=1)
    keep = (corners[:, 1] > corners[:, 0]).all(axis=1)
    for name in _PER_OBJECT:
        target[name] = target[name][keep]
    return out, target


def normalize(image, target):
    """PIL image -> float32 (3, H, W) ImageNet-normalised; boxes -> cxcywh relative to the image."""
    arr = np.asarray(image, dtype=np.uint8).astype(np.float32) / 255
    arr = arr.transpose(2, 0, 1)
    arr = (arr - np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]) / np.asarray(IMAGENET_STD, np.float32)[:, None, None]
    h, w = arr.shape[1:]
    target = dict(target)
    b = target["boxes"]
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)
    target["boxes"] = (cxcywh / np.asarray([w, h, w, h], np.float32)).astype(np.float32)
    return np.ascontiguousarray(arr), target


def _random_size_crop(image, target, min_size, max_size):
    w = random.randint(min_size, min(image.width, max_size))
    h = random.randint(min_size, min(image.height, max_size))
    top = random.randint(0, image.height - h)
    left = random.randint(0, image.width - w)
    return crop(image, target, (top, left, h, w))


def make_transforms(image_set, input_scale=1.0):
    """The official augmentation (sizes as :func:`dacdetr.datasets.coco.make_coco_transforms`): train =
    flip(0.5), then with p 0.5 resize to one of the scales (max 1333), else resize to 400/500/600, random
    crop of each side in [384, 600] and resize to one of the scales; val = resize to 800 (max 1333)."""
    s = float(input_scale)
    scales = _scaled(OFFICIAL_SCALES, s)
    max_size = _scaled([1333], s)[0]
    if image_set == "val":
        return lambda img, t: normalize(*resize(img, t, random.choice(_scaled([800], s)), max_size))
    if image_set != "train":
        raise ValueError(f"unknown image_set {image_set!r} (expected 'train' or 'val')")
    crop_min, crop_max = _scaled([384, 600], s)
    crop_scales = _scaled([400, 500, 600], s)

    def train(img, t):
        if random.random() < 0.5:
            img, t = hflip(img, t)
        if random.random() < 0.5:
            img, t = resize(img, t, random.choice(scales), max_size)
        else:
            img, t = resize(img, t, random.choice(crop_scales))
            img, t = _random_size_crop(img, t, crop_min, crop_max)
            img, t = resize(img, t, random.choice(scales), max_size)
        return normalize(img, t)

    return train


class CocoDetection:
    """Images and annotations of a COCO json (pycocotools), augmented by ``transforms``; ``.coco`` is the
    ground truth for :class:`dacdetr.datasets.coco_eval.CocoEvaluator`."""

    def __init__(self, img_folder, ann_file, transforms):
        from pycocotools.coco import COCO

        self.root = str(img_folder)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(ann_file))
        self.ids = sorted(self.coco.imgs.keys())
        self.transforms = transforms

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        image_id = self.ids[idx]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        info = self.coco.loadImgs(image_id)[0]
        with Image.open(os.path.join(self.root, info["file_name"])) as f:
            img = f.convert("RGB")
        target = prepare(img, image_id, anns)
        return self.transforms(img, target) if self.transforms is not None else (img, target)


def build(image_set, args, eval_in_training_set=False):
    """The COCO split of ``--coco_path`` (``train2017`` / ``val2017`` + ``annotations/instances_*.json``);
    ``eval_in_training_set`` reads the train split with the val transforms."""
    root = Path(args.coco_path)
    split = "train" if eval_in_training_set else image_set
    if split not in ("train", "val"):
        raise ValueError(f"unknown image_set {image_set!r}")
    check_coco_root(root, (split,))
    return CocoDetection(root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json",
                         make_transforms("val" if eval_in_training_set else image_set,
                                         getattr(args, "input_scale", 1.0)))
