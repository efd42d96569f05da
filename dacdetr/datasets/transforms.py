"""Joint image + target augmentations of the DETR family (boxes stay consistent with the image).

Targets carry absolute ``xyxy`` boxes until :class:`Normalize`, which converts them to
``cxcywh`` divided by the image (w, h). All randomness comes from Python's ``random`` module
(seeded per rank by ``main``), as in the official code.
"""
import random

import PIL
import torch
import torch.nn.functional as nnf
import torchvision.transforms as TV
import torchvision.transforms.functional as F

__all__ = [
    "crop", "hflip", "resize", "pad", "RandomCrop", "RandomSizeCrop", "CenterCrop",
    "RandomHorizontalFlip", "RandomResize", "RandomPad", "RandomSelect", "ToTensor",
    "RandomErasing", "Normalize", "Compose", "get_size_with_aspect_ratio",
]


def _xyxy_to_cxcywh(b):
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def crop(image, target, region):
    """Crop ``region = (top, left, height, width)``; boxes are shifted, clipped, and objects
    whose clipped box (or mask) is empty are dropped."""
    top, left, height, width = region
    out = F.crop(image, top, left, height, width)
    target = dict(target)
    target["size"] = torch.tensor([height, width])
    per_object = ["labels", "area", "iscrowd"]

    if "boxes" in target:
        limit = torch.as_tensor([width, height], dtype=torch.float32)
        corners = (target["boxes"] - torch.as_tensor([left, top, left, top])).reshape(-1, 2, 2)
        corners = torch.min(corners, limit).clamp(min=0)
        target["boxes"] = corners.reshape(-1, 4)
        target["area"] = (corners[:, 1] - corners[:, 0]).prod(dim=1)
        per_object.append("boxes")
    if "masks" in target:
        target["masks"] = target["masks"][:, top:top + height, left:left + width]
        per_object.append("masks")

    if "boxes" in target or "masks" in target:
        if "boxes" in target:
            c = target["boxes"].reshape(-1, 2, 2)
            keep = (c[:, 1] > c[:, 0]).all(dim=1)
        else:
            keep = target["masks"].flatten(1).any(1)
        for name in per_object:
            target[name] = target[name][keep]
    return out, target


def hflip(image, target):
    out = F.hflip(image)
    w, _ = image.size
    target = dict(target)
    if "boxes" in target:
        b = target["boxes"]
        target["boxes"] = torch.stack((w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]), dim=1)
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return out, target


def get_size_with_aspect_ratio(image_size, size, max_size=None):
    """(h, w) after scaling the shorter side of ``image_size = (w, h)`` to ``size``, unless the
    longer side would then exceed ``max_size`` (then ``size`` is reduced accordingly)."""
    w, h = image_size
    if max_size is not None:
        short, long = float(min(w, h)), float(max(w, h))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def resize(image, target, size, max_size=None):
    """``size``: shorter-side length (int) or an explicit (w, h)."""
    if isinstance(size, (list, tuple)):
        new_hw = (size[1], size[0])
    else:
        new_hw = get_size_with_aspect_ratio(image.size, size, max_size)
    out = F.resize(image, list(new_hw))
    if target is None:
        return out, None

    rw = float(out.size[0]) / float(image.size[0])
    rh = float(out.size[1]) / float(image.size[1])
    target = dict(target)
    if "boxes" in target:
        target["boxes"] = target["boxes"] * torch.as_tensor([rw, rh, rw, rh])
    if "area" in target:
        target["area"] = target["area"] * (rw * rh)
    target["size"] = torch.tensor(list(new_hw))
    if "masks" in target:
        m = nnf.interpolate(target["masks"][:, None].float(), size=new_hw, mode="nearest")
        target["masks"] = m[:, 0] > 0.5
    return out, target


def pad(image, target, padding):
    """Pad ``padding = (right, bottom)`` pixels; boxes are unchanged."""
    out = F.pad(image, [0, 0, padding[0], padding[1]])
    if target is None:
        return out, None
    target = dict(target)
    target["size"] = torch.tensor(out.size[::-1])
    if "masks" in target:
        target["masks"] = nnf.pad(target["masks"], (0, padding[0], 0, padding[1]))
    return out, target


class RandomCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img, target):
        return crop(img, target, TV.RandomCrop.get_params(img, self.size))


class RandomSizeCrop:
    """Crop a random (h, w), each side uniform in [min_size, min(image side, max_size)]."""

    def __init__(self, min_size: int, max_size: int):
        self.min_size = min_size
        self.max_size = max_size

    def __call__(self, img: PIL.Image.Image, target: dict):
        w = random.randint(self.min_size, min(img.width, self.max_size))
        h = random.randint(self.min_size, min(img.height, self.max_size))
        return crop(img, target, TV.RandomCrop.get_params(img, [h, w]))


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, img, target):
        iw, ih = img.size
        ch, cw = self.size
        top = int(round((ih - ch) / 2.0))
        left = int(round((iw - cw) / 2.0))
        return crop(img, target, (top, left, ch, cw))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return hflip(img, target)
        return img, target


class RandomResize:
    """Resize the shorter side to a size drawn from ``sizes`` (longer side capped at max_size)."""

    def __init__(self, sizes, max_size=None):
        assert isinstance(sizes, (list, tuple))
        self.sizes = sizes
        self.max_size = max_size

    def __call__(self, img, target=None):
        return resize(img, target, random.choice(self.sizes), self.max_size)

    def __repr__(self):
        return f"RandomResize(sizes={list(self.sizes)}, max_size={self.max_size})"


class RandomPad:
    def __init__(self, max_pad):
        self.max_pad = max_pad

    def __call__(self, img, target):
        return pad(img, target, (random.randint(0, self.max_pad), random.randint(0, self.max_pad)))


class RandomSelect:
    """Apply ``transforms1`` with probability p, else ``transforms2``."""

    def __init__(self, transforms1, transforms2, p=0.5):
        self.transforms1 = transforms1
        self.transforms2 = transforms2
        self.p = p

    def __call__(self, img, target):
        if random.random() < self.p:
            return self.transforms1(img, target)
        return self.transforms2(img, target)


class ToTensor:
    def __call__(self, img, target):
        return F.to_tensor(img), target


class RandomErasing:
    def __init__(self, *args, **kwargs):
        self.eraser = TV.RandomErasing(*args, **kwargs)

    def __call__(self, img, target):
        return self.eraser(img), target


class Normalize:
    """Normalise the image tensor; boxes become cxcywh in [0, 1] relative to the image."""

    def __init__(self, mean, std):
        self.mean = mean
        self.std = std

    def __call__(self, image, target=None):
        image = F.normalize(image, mean=self.mean, std=self.std)
        if target is None:
            return image, None
        target = dict(target)
        if "boxes" in target:
            h, w = image.shape[-2:]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            target["boxes"] = _xyxy_to_cxcywh(target["boxes"]) / scale
        return image, target


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, image, target):
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self):
        inner = "".join(f"\n    {t}" for t in self.transforms)
        return f"{type(self).__name__}({inner}\n)"
