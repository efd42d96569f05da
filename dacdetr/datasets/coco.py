"""COCO 2017 detection (standard on-disk layout) returning DETR-style targets.

Layout expected under ``--coco_path``::

    train2017/  val2017/  annotations/instances_train2017.json  annotations/instances_val2017.json
"""
import io
import os
from pathlib import Path

import torch
import torch.utils.data
from PIL import Image

from . import transforms as T

__all__ = [
    "CocoDetection", "ConvertCocoPolysToMask", "convert_coco_poly_to_mask",
    "make_coco_transforms", "build", "CocoPathError", "OFFICIAL_SCALES",
]

OFFICIAL_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEMO_COMMAND = "python -m dacdetr.datasets.demo --out datasets/coco_demo"  # same text as demo.DEMO_COMMAND


class CocoPathError(FileNotFoundError):
    """The COCO root (or one of its parts) is missing."""


def _layout_message(root, missing):
    return (
        f"COCO data not found: {missing} does not exist (--coco_path {root}).\n"
        f"Expected layout under {root}:\n"
        f"  train2017/*.jpg  val2017/*.jpg\n"
        f"  annotations/instances_train2017.json  annotations/instances_val2017.json\n"
        f"Download COCO 2017 there, or build the small offline demo set with:\n"
        f"  {DEMO_COMMAND}\n"
        f"and pass --coco_path datasets/coco_demo."
    )


class CocoDetection(torch.utils.data.Dataset):
    """Images + raw annotations from a COCO json, converted by :class:`ConvertCocoPolysToMask`.

    ``cache_mode`` keeps each image's encoded bytes in memory after its first read.
    """

    def __init__(self, img_folder, ann_file, transforms, return_masks=False, cache_mode=False,
                 local_rank=0, local_size=1):
        import contextlib

        from pycocotools.coco import COCO

        self.root = str(img_folder)
        self.ann_file = str(ann_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(self.ann_file)
        self.ids = sorted(self.coco.imgs.keys())
        self._transforms = transforms
        self.prepare = ConvertCocoPolysToMask(return_masks)
        self.cache_mode = cache_mode
        self.local_rank, self.local_size = local_rank, local_size
        self.cache = {}

    def __len__(self):
        return len(self.ids)

    def get_image(self, file_name):
        path = os.path.join(self.root, file_name)
        if self.cache_mode:
            if file_name not in self.cache:
                with open(path, "rb") as f:
                    self.cache[file_name] = f.read()
            return Image.open(io.BytesIO(self.cache[file_name])).convert("RGB")
        return Image.open(path).convert("RGB")

    def __getitem__(self, idx):
        image_id = self.ids[idx]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        img = self.get_image(self.coco.loadImgs(image_id)[0]["file_name"])
        img, target = self.prepare(img, {"image_id": image_id, "annotations": anns})
        if self._transforms is not None:
            img, target = self._transforms(img, target)
        return img, target


def convert_coco_poly_to_mask(segmentations, height, width):
    from pycocotools import mask as coco_mask

    masks = []
    for polygons in segmentations:
        m = coco_mask.decode(coco_mask.frPyObjects(polygons, height, width))
        if m.ndim < 3:
            m = m[..., None]
        masks.append(torch.as_tensor(m, dtype=torch.uint8).any(dim=2))
    if masks:
        return torch.stack(masks, dim=0)
    return torch.zeros((0, height, width), dtype=torch.uint8)


class ConvertCocoPolysToMask:
    """Raw COCO annotations -> tensors.

    Crowd objects are dropped, ``bbox`` xywh becomes xyxy clipped to the image, degenerate
    boxes are dropped. Keys: boxes (float32 xyxy, absolute), labels (raw category ids, int64),
    image_id (1-elem tensor), area, iscrowd, orig_size and size ([h, w]); masks if asked.
    """

    def __init__(self, return_masks=False):
        self.return_masks = return_masks

    def __call__(self, image, target):
        w, h = image.size
        anns = [a for a in target["annotations"] if a.get("iscrowd", 0) == 0]

        boxes = torch.as_tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(min=0, max=w)
        boxes[:, 1::2].clamp_(min=0, max=h)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
        keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 2] > boxes[:, 0])

        out = {"boxes": boxes[keep], "labels": labels[keep]}
        if self.return_masks:
            out["masks"] = convert_coco_poly_to_mask([a["segmentation"] for a in anns], h, w)[keep]
        out["image_id"] = torch.tensor([target["image_id"]])
        if anns and "keypoints" in anns[0]:
            kp = torch.as_tensor([a["keypoints"] for a in anns], dtype=torch.float32)
            out["keypoints"] = kp.view(kp.shape[0], -1, 3)[keep]
        out["area"] = torch.tensor([a["area"] for a in anns])[keep]
        out["iscrowd"] = torch.tensor([a.get("iscrowd", 0) for a in anns])[keep]
        out["orig_size"] = torch.as_tensor([int(h), int(w)])
        out["size"] = torch.as_tensor([int(h), int(w)])
        return image, out


def _scaled(values, factor):
    return [max(1, int(round(v * factor))) for v in values]


def make_coco_transforms(image_set, input_scale=1.0):
    """The official augmentation. ``input_scale`` (default 1 = official) multiplies every size
    (train scales 480..800, max 1333, crop branch 400/500/600 + RandomSizeCrop(384, 600),
    val 800), e.g. 0.25 for the small demo images."""
    s = float(input_scale)
    normalize = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    scales = _scaled(OFFICIAL_SCALES, s)
    max_size = _scaled([1333], s)[0]

    if image_set == "train":
        crop_min, crop_max = _scaled([384, 600], s)
        return T.Compose([
            T.RandomHorizontalFlip(),
            T.RandomSelect(
                T.RandomResize(scales, max_size=max_size),
                T.Compose([
                    T.RandomResize(_scaled([400, 500, 600], s)),
                    T.RandomSizeCrop(crop_min, crop_max),
                    T.RandomResize(scales, max_size=max_size),
                ]),
            ),
            normalize,
        ])
    if image_set == "val":
        return T.Compose([T.RandomResize(_scaled([800], s), max_size=max_size), normalize])
    raise ValueError(f"unknown image_set {image_set!r} (expected 'train' or 'val')")


def check_coco_root(root, image_sets=("train", "val")):
    """Raise :class:`CocoPathError` naming the first missing part of the layout."""
    root = Path(root)
    if not root.exists():
        raise CocoPathError(_layout_message(root, root))
    for split in image_sets:
        for part in (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json"):
            if not part.exists():
                raise CocoPathError(_layout_message(root, part))


def build(image_set, args, eval_in_training_set=False):
    from common.distributed import get_rank, get_world_size

    root = Path(args.coco_path)
    paths = {
        "train": (root / "train2017", root / "annotations" / "instances_train2017.json"),
        "val": (root / "val2017", root / "annotations" / "instances_val2017.json"),
    }
    if image_set not in paths:
        raise ValueError(f"unknown image_set {image_set!r}")
    check_coco_root(root, (image_set,))
    img_folder, ann_file = paths[image_set]
    transform_set = "val" if eval_in_training_set else image_set
    if eval_in_training_set:
        print("use validation dataset transforms")
    world = get_world_size()
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return CocoDetection(
        img_folder, ann_file,
        transforms=make_coco_transforms(transform_set, getattr(args, "input_scale", 1.0)),
        return_masks=getattr(args, "masks", False),
        cache_mode=getattr(args, "cache_mode", False),
        local_rank=get_rank() % max(local_size, 1),
        local_size=local_size,
    )
