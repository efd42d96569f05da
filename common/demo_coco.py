"""A small, real, offline detection set in COCO format, built from scikit-learn's digits.

Every image is a canvas with 1-4 handwritten digits (the 1,797 real 8x8 scans bundled with
scikit-learn) upscaled and pasted at random, non-overlapping positions. The set is written
once, deterministically, in the standard COCO layout::

    <out>/train2017/000000000001.png ...
    <out>/val2017/000000100001.png ...
    <out>/annotations/instances_train2017.json
    <out>/annotations/instances_val2017.json

so the ordinary COCO loader and evaluator read it. Category ids 1..10 are the digits "0".."9"
(they fit in the 91 COCO logits of the detector). Train and val images use disjoint sets of
digit scans. Boxes are the tight boxes of the digit's ink (pixels above a threshold after
upscaling); ``area`` is the box area. Every annotation also records ``digit_index``, the row of
``sklearn.datasets.load_digits()`` it was drawn from.

Usage::

    python -m common.demo_coco --out datasets/coco_demo

(``python -m dacdetr.datasets.demo`` is the same command.) The detection demos of DAC-DETR and of the
torchvision detectors (:mod:`common.detection`) train on it; Mask R-CNN's masks are the annotations'
``segmentation`` polygons (each digit's box).
"""
import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["build_demo_coco", "DEMO_CATEGORIES", "DEMO_COMMAND", "main"]

DEMO_CATEGORIES = [{"id": d + 1, "name": str(d), "supercategory": "digit"} for d in range(10)]
DEMO_COMMAND = "python -m common.demo_coco --out datasets/coco_demo"

# canvas side range, digit side range, digits per image
_CANVAS = (128, 192)
_DIGIT = (24, 64)
_PER_IMAGE = (1, 4)
_INK_THRESHOLD = 64  # on the 0..255 upscaled digit


def _split_digits(n_digits, val_fraction, rng):
    order = rng.permutation(n_digits)
    n_val = int(round(n_digits * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _overlaps(box, boxes, gap=2):
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in boxes:
        if x0 < a1 + gap and a0 < x1 + gap and y0 < b1 + gap and b0 < y1 + gap:
            return True
    return False


def _render_image(rng, digits_img, digit_labels, digit_pool):
    """One canvas; returns (HxWx3 uint8, list of (xyxy ink box, label, digit index))."""
    w = int(rng.integers(_CANVAS[0], _CANVAS[1] + 1))
    h = int(rng.integers(_CANVAS[0], _CANVAS[1] + 1))
    base = rng.integers(0, 96, size=3)
    canvas = np.broadcast_to(base, (h, w, 3)).astype(np.float64)
    if rng.random() < 0.5:  # noisy background
        canvas = canvas + rng.normal(0.0, 12.0, size=(h, w, 3))
    n = int(rng.integers(_PER_IMAGE[0], _PER_IMAGE[1] + 1))
    placed, objects = [], []
    for _ in range(n):
        side = int(rng.integers(_DIGIT[0], _DIGIT[1] + 1))
        for _attempt in range(30):
            x0 = int(rng.integers(0, w - side + 1))
            y0 = int(rng.integers(0, h - side + 1))
            if not _overlaps((x0, y0, x0 + side, y0 + side), placed):
                break
        else:
            continue  # no room left for this digit
        idx = int(digit_pool[rng.integers(0, len(digit_pool))])
        glyph = digits_img[idx] * (255.0 / 16.0)
        glyph = Image.fromarray(glyph.astype(np.uint8)).resize((side, side), Image.BILINEAR)
        glyph = np.asarray(glyph, dtype=np.float64)
        ink = glyph >= _INK_THRESHOLD
        if not ink.any():
            continue
        ys, xs = np.nonzero(ink)
        color = rng.integers(150, 256, size=3).astype(np.float64)
        alpha = (glyph / 255.0)[..., None]
        region = canvas[y0:y0 + side, x0:x0 + side]
        canvas[y0:y0 + side, x0:x0 + side] = region * (1 - alpha) + color * alpha
        placed.append((x0, y0, x0 + side, y0 + side))
        box = (x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1)
        objects.append((tuple(float(v) for v in box), int(digit_labels[idx]), idx))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def _write_split(out, split, n_images, first_id, rng, digits, pool):
    img_dir = out / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_id * 10
    for k in range(n_images):
        image_id = first_id + k
        arr, objects = _render_image(rng, digits.images, digits.target, pool)
        while not objects:  # every image carries at least one digit
            arr, objects = _render_image(rng, digits.images, digits.target, pool)
        name = f"{image_id:012d}.png"
        Image.fromarray(arr).save(img_dir / name, optimize=False)
        images.append({"id": image_id, "file_name": name, "height": arr.shape[0], "width": arr.shape[1]})
        for (x0, y0, x1, y1), label, idx in objects:
            bw, bh = x1 - x0, y1 - y0
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": label + 1,
                "bbox": [x0, y0, bw, bh], "area": bw * bh, "iscrowd": 0,
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                "digit_index": idx,
            })
            ann_id += 1
    ann = {
        "info": {"description": f"layerzoo digits detection demo ({split})", "version": "1.0"},
        "licenses": [], "images": images, "annotations": annotations,
        "categories": DEMO_CATEGORIES,
    }
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    path = out / "annotations" / f"instances_{split}2017.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(ann))
    os.replace(tmp, path)
    return ann


def build_demo_coco(out, n_train=300, n_val=60, seed=0, val_fraction=0.2):
    """Write the demo set under ``out``; returns {"train": coco_dict, "val": coco_dict}.

    Deterministic for a given (n_train, n_val, seed, val_fraction).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = Path(out)
    rng = np.random.default_rng(seed)
    train_pool, val_pool = _split_digits(len(digits.images), val_fraction, rng)
    train = _write_split(out, "train", n_train, 1, np.random.default_rng(seed + 1), digits, train_pool)
    val = _write_split(out, "val", n_val, 100001, np.random.default_rng(seed + 2), digits, val_pool)
    return {"train": train, "val": val}


def main(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description="Write the digits detection demo set in COCO format.")
    p.add_argument("--out", default="datasets/coco_demo", help="output root (COCO layout)")
    p.add_argument("--n_train", type=int, default=300)
    p.add_argument("--n_val", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    res = build_demo_coco(a.out, a.n_train, a.n_val, a.seed)
    for split, ann in res.items():
        print(f"{split}: {len(ann['images'])} images, {len(ann['annotations'])} boxes "
              f"-> {Path(a.out) / 'annotations' / f'instances_{split}2017.json'}")


if __name__ == "__main__":
    main()
