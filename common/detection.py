"""torchvision detection with the papers' backbones: backbone -> FPN -> ``FasterRCNN`` / ``MaskRCNN``.

Any module whose ``forward(x)`` returns a tuple of stage maps and which lists their channels in
``out_channels`` (the detection backbones of ``dla``, ``rlanet`` and ``dwnet``: ``<paper>.create_backbone``)
becomes a torchvision detector::

    from common.detection import fasterrcnn
    model = fasterrcnn(dla.create_backbone('ResNet_dlal', layers=[3, 4, 6, 3], frozen_stages=1), num_classes=91)

The FPN is torchvision's ``FeaturePyramidNetwork`` (256 channels, ``LastLevelMaxPool``: five levels, the
mmdet R50-FPN layout of the papers' configs); the anchors are one size per level, ratios 0.5 / 1 / 2; the RoI
heads are torchvision's defaults (``MultiScaleRoIAlign`` over the backbone levels). ``<paper>.detection``
has the per-paper entry points.

The demo trains a detector briefly on the digits COCO set (:mod:`common.demo_coco`, written on the fly) and
prints pycocotools' COCO table::

    python -m common.detection --backbone dla:ResNet_dlal --demo        # or: python -m dla.detection --demo
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn

from .coco_eval import STAT_NAMES  # the 12 numbers of ``COCOeval.stats``

__all__ = ["FPNBackbone", "fasterrcnn", "maskrcnn", "build_detector", "CocoDetectionSet", "collate",
           "train_iterations", "evaluate_coco", "STAT_NAMES", "run_demo", "demo_main", "DEMO_BACKBONES"]



class FPNBackbone(nn.Module):
    """``body`` (a backbone returning a tuple of maps) + torchvision's ``FeaturePyramidNetwork`` over the maps
    ``returned`` (indices into that tuple), then a max-pooled extra level: ``OrderedDict('0', '1', ..., 'pool')``
    of ``out_channels`` maps, which is what torchvision's detectors take (as ``BackboneWithFPN``, for a
    backbone that is not a chain of children)."""

    def __init__(self, body, in_channels=None, returned=None, out_channels=256, extra_blocks="pool"):
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        in_channels = list(in_channels if in_channels is not None else getattr(body, "out_channels", []))
        if not in_channels:
            raise ValueError(f"{type(body).__name__} does not list its maps' channels (out_channels); "
                             "pass in_channels=[...]")
        self.returned = tuple(range(len(in_channels))) if returned is None else tuple(returned)
        self.body = body
        self.fpn = FeaturePyramidNetwork([in_channels[i] for i in self.returned], out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_blocks == "pool" else extra_blocks)
        self.out_channels = out_channels

    @property
    def featmap_names(self):
        return [str(i) for i in range(len(self.returned))]

    def forward(self, x):
        maps = self.body(x)
        return self.fpn(OrderedDict((str(k), maps[i]) for k, i in enumerate(self.returned)))


def _anchors(n_levels, sizes):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple(sizes) if sizes is not None else tuple(32 * 2 ** i for i in range(n_levels))
    if len(sizes) != n_levels:
        raise ValueError(f"anchor_sizes: one size per FPN level ({n_levels}), got {sizes}")
    return AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * n_levels)


def build_detector(kind, backbone, num_classes=91, returned=None, fpn_channels=256, anchor_sizes=None,
                   representation_size=None, **kwargs):
    """A torchvision ``FasterRCNN`` (``kind='fasterrcnn'``) or ``MaskRCNN`` (``'maskrcnn'``) on ``backbone`` + FPN.
    ``returned``: the backbone maps the FPN reads (default: all); ``anchor_sizes``: one per FPN level (default
    32, 64, ... as torchvision's R50-FPN); ``representation_size``: the width of the two-fc box head
    (torchvision's default 1024); ``kwargs`` go to the torchvision class (``min_size``, ``max_size``,
    ``image_mean``, ``image_std``, ``box_detections_per_img``, ...)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    if kind not in ("fasterrcnn", "maskrcnn"):
        raise ValueError(f"kind must be 'fasterrcnn' or 'maskrcnn', got {kind!r}")
    body = backbone if isinstance(backbone, FPNBackbone) else FPNBackbone(backbone, returned=returned,
                                                                          out_channels=fpn_channels)
    names = body.featmap_names
    kwargs.setdefault("rpn_anchor_generator", _anchors(len(names) + 1, anchor_sizes))
    kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2))
    if representation_size is not None:
        kwargs.setdefault("box_head", TwoMLPHead(body.out_channels * 7 * 7, representation_size))
        kwargs.setdefault("box_predictor", FastRCNNPredictor(representation_size, num_classes))
        if kind == "maskrcnn":  # torchvision's default mask head, its predictor made here too
            kwargs.setdefault("mask_predictor", MaskRCNNPredictor(256, 256, num_classes))
        num_classes = None  # given by the predictors (torchvision's rule)
    if kind == "maskrcnn":
        kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2))
        return MaskRCNN(body, num_classes=num_classes, **kwargs)
    return FasterRCNN(body, num_classes=num_classes, **kwargs)


def fasterrcnn(backbone, num_classes=91, **kwargs):
    """torchvision ``FasterRCNN`` on ``backbone`` + FPN (:func:`build_detector`)."""
    return build_detector("fasterrcnn", backbone, num_classes, **kwargs)


def maskrcnn(backbone, num_classes=91, **kwargs):
    """torchvision ``MaskRCNN`` on ``backbone`` + FPN (:func:`build_detector`)."""
    return build_detector("maskrcnn", backbone, num_classes, **kwargs)


# --------------------------------------------------------------------------------------------------------
# COCO data, a short training loop, pycocotools evaluation
# --------------------------------------------------------------------------------------------------------
class CocoDetectionSet(torch.utils.data.Dataset):
    """A COCO-format split as torchvision detection targets: ``(image float CHW in [0, 1], {'boxes' xyxy,
    'labels' (the category ids), 'image_id', and with ``masks=True`` 'masks' (N, H, W) uint8})``. Crowd
    annotations and empty boxes are left out."""

    def __init__(self, img_dir, ann_file, masks=False):
        from pycocotools.coco import COCO

        for path in (img_dir, ann_file):
            if not os.path.exists(path):
                raise FileNotFoundError(f"COCO data not found: {path}")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(ann_file)
        self.img_dir, self.masks = img_dir, masks
        self.ids = sorted(self.coco.imgs)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, idx):
        from PIL import Image

        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        img = Image.open(os.path.join(self.img_dir, info["file_name"])).convert("RGB")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0) and a["bbox"][2] > 0
                and a["bbox"][3] > 0]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = dict(boxes=boxes, labels=torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
                      image_id=image_id)
        if self.masks:
            with warnings.catch_warnings():  # pycocotools' own NumPy 2 copy= notice
                warnings.simplefilter("ignore", DeprecationWarning)
                masks = [self.coco.annToMask(a) for a in anns]
            target["masks"] = torch.from_numpy(np.stack(masks) if masks else
                                               np.zeros((0, info["height"], info["width"]), np.uint8))
        return x, target


def collate(batch):
    return tuple(zip(*batch))


def train_iterations(model, loader, iterations, lr=0.01, momentum=0.9, weight_decay=1e-4, warmup=10, log=None,
                     log_every=10):
    """``iterations`` SGD steps (linear warm-up over ``warmup`` steps, gradient norm clipped at 10) cycling
    through ``loader``; returns the total loss of each step. A non-finite loss stops with ``FloatingPointError``."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    losses, step = [], 0
    while step < iterations:
        for images, targets in loader:
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup))
            parts = model(list(images), [dict(t) for t in targets])
            loss = sum(parts.values())
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite loss at step {step}: "
                                         + ", ".join(f"{k} {v.item():.4g}" for k, v in parts.items()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            losses.append(loss.item())
            if log is not None and (step % log_every == 0 or step == iterations - 1):
                log(f"iter {step:4d}  loss {loss.item():.4f}  " + "  ".join(f"{k} {v.item():.4f}"
                                                                             for k, v in parts.items()))
            step += 1
            if step >= iterations:
                break
    return losses


@torch.no_grad()
def evaluate_coco(model, dataset, batch_size=2, iou_types=("bbox",), log=print):
    """Run ``model`` (eval mode) over ``dataset`` (:class:`CocoDetectionSet`) and evaluate with pycocotools
    (:class:`common.coco_eval.CocoEvaluator`); prints the COCO table of each IoU type through ``log`` and
    returns ``{iou_type: the 12 stats}`` (``STAT_NAMES``; -1 where COCO has no value)."""
    from .coco_eval import CocoEvaluator

    model.eval()
    evaluator = CocoEvaluator(dataset.coco, tuple(iou_types))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, targets in loader:
        evaluator.update({int(t["image_id"]): out for out, t in zip(model(list(images)), targets)})
    evaluator.accumulate()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        evaluator.summarize()
    log(buf.getvalue().rstrip())
    return {t: [float(v) for v in evaluator.coco_eval[t].stats] for t in iou_types}


# --------------------------------------------------------------------------------------------------------
# The demo
# --------------------------------------------------------------------------------------------------------
#: ``paper:Name`` -> (package, official name, backbone kwargs of the demo: small, trained from scratch)
DEMO_BACKBONES = {
    "dla:ResNet_dlal": ("dla", "ResNet_dlal", dict(layers=[1, 1, 1, 1], frozen_stages=-1, norm_eval=False)),
    "rlanet:RLA_ResNet": ("rlanet", "RLA_ResNet", dict(layers=[1, 1, 1, 1], frozen_stages=-1, norm_eval=False)),
    "dwnet:DWNet": ("dwnet", "DWNet", dict(embed_dim=32, depths=[1, 1, 1, 1], drop_path_rate=0.0)),
}

#: the demo detector: small images (the digits canvases are 128-192 px), anchors for 24-64 px digits
DEMO_DETECTOR = dict(num_classes=11, min_size=128, max_size=192, anchor_sizes=(16, 32, 64, 128, 256),
                     fpn_channels=64, representation_size=256, rpn_batch_size_per_image=64, box_batch_size_per_image=128,
                     box_detections_per_img=20)


def demo_backbone(spec, **overrides):
    """The demo's small backbone for ``spec`` (``'dla:ResNet_dlal'``, ...) with ``overrides``."""
    if spec not in DEMO_BACKBONES:
        raise ValueError(f"unknown backbone {spec!r}; choose one of: {', '.join(DEMO_BACKBONES)}")
    pkg, name, kw = DEMO_BACKBONES[spec]
    return importlib.import_module(pkg).create_backbone(name, **{**kw, **overrides})


def run_demo(spec, kind="fasterrcnn", data=None, iterations=60, n_train=40, n_val=12, batch_size=2, lr=0.01,
             seed=0, backbone_kwargs=None, log=print):
    """Train a small ``kind`` detector with the ``spec`` backbone for ``iterations`` steps on the digits COCO
    demo (written under ``data``, or a temporary folder, when not there), evaluate on its val split, print the
    COCO table(s). Returns ``dict(losses=[...], stats={iou_type: 12 numbers}, seconds=...)``."""
    from .demo_coco import build_demo_coco

    torch.manual_seed(seed)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        root = data or stack.enter_context(tempfile.TemporaryDirectory(prefix="coco_demo_"))
        if not os.path.exists(os.path.join(root, "annotations", "instances_val2017.json")):
            build_demo_coco(root, n_train=n_train, n_val=n_val, seed=seed)
        masks = kind == "maskrcnn"
        train = CocoDetectionSet(os.path.join(root, "train2017"),
                                 os.path.join(root, "annotations", "instances_train2017.json"), masks=masks)
        val = CocoDetectionSet(os.path.join(root, "val2017"), os.path.join(root, "annotations",
                                                                          "instances_val2017.json"))
        model = build_detector(kind, demo_backbone(spec, **(backbone_kwargs or {})), **DEMO_DETECTOR)
        gen = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=collate,
                                             generator=gen)
        log(f"{kind} with {spec}: {sum(p.numel() for p in model.parameters()):,} parameters, {len(train)} train / "
            f"{len(val)} val images, {iterations} iterations")
        losses = train_iterations(model, loader, iterations, lr=lr, log=log)
        stats = evaluate_coco(model, val, batch_size=batch_size, iou_types=("bbox", "segm") if masks else ("bbox",),
                              log=log)
    seconds = time.time() - t0
    log(f"done in {seconds:.1f} s")
    return dict(losses=losses, stats=stats, seconds=seconds)


def demo_main(argv=None, prog=None, backbone=None):
    """The demo's command line (``python -m common.detection --backbone dla:ResNet_dlal --demo``; the papers'
    ``python -m <paper>.detection --demo`` fix ``backbone``)."""
    p = argparse.ArgumentParser(prog=prog, description="Train a torchvision detector with a paper's backbone on "
                                "the digits COCO demo for a few iterations and print the COCO table (CPU).")
    if backbone is None:
        p.add_argument("--backbone", required=True, choices=list(DEMO_BACKBONES))
    p.add_argument("--demo", action="store_true", help="run the demo (the only action)")
    p.add_argument("--arch", default="fasterrcnn", choices=["fasterrcnn", "maskrcnn"])
    p.add_argument("--data", default=None, help="digits COCO folder (written there if missing; default: a "
                                                "temporary folder)")
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--n_train", type=int, default=40)
    p.add_argument("--n_val", type=int, default=12)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not a.demo:
        p.error("nothing to do: pass --demo")
    if a.iters < 1 or a.n_train < 1 or a.n_val < 1:
        p.error("--iters, --n_train and --n_val must be positive")
    try:
        res = run_demo(backbone or a.backbone, a.arch, a.data, a.iters, a.n_train, a.n_val, lr=a.lr, seed=a.seed)
    except (FileNotFoundError, FloatingPointError) as err:
        print(f"{p.prog}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({t: dict(zip(STAT_NAMES, v)) for t, v in res["stats"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(demo_main())


class PaperDetection:
    """A paper's torchvision-detection entry points over its ``create_backbone`` (``<paper>/detection.py`` is one
    instance): ``backbone`` / ``fasterrcnn`` / ``maskrcnn`` with the official detection configuration of the
    backbone (``backbone_kwargs`` override it; ``pretrained_backbone`` is loaded through the backbone's
    ``init_weights``, its report logged; otherwise the official init), and ``main``, the paper's
    ``python -m <paper>.detection --demo``."""

    def __init__(self, paper, name, kwargs):
        self.paper, self.name, self.kwargs = paper, name, dict(kwargs)

    def backbone(self, backbone_kwargs=None, pretrained_backbone=None):
        create = importlib.import_module(self.paper).create_backbone
        net = create(self.name, **{**self.kwargs, **(backbone_kwargs or {}), "pretrained": pretrained_backbone})
        net.init_weights()
        return net

    def fasterrcnn(self, num_classes=91, backbone_kwargs=None, pretrained_backbone=None, **kwargs):
        """torchvision ``FasterRCNN`` on the backbone + FPN; ``kwargs``: :func:`build_detector`'s."""
        return build_detector("fasterrcnn", self.backbone(backbone_kwargs, pretrained_backbone), num_classes, **kwargs)

    def maskrcnn(self, num_classes=91, backbone_kwargs=None, pretrained_backbone=None, **kwargs):
        """torchvision ``MaskRCNN`` on the backbone + FPN; ``kwargs``: :func:`build_detector`'s."""
        return build_detector("maskrcnn", self.backbone(backbone_kwargs, pretrained_backbone), num_classes, **kwargs)

    def main(self, argv=None):
        return demo_main(argv, prog=f"python -m {self.paper}.detection", backbone=f"{self.paper}:{self.name}")
