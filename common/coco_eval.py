"""COCO evaluation (boxes, masks) with pycocotools, usable from several processes.

Each process collects its detections with :meth:`CocoEvaluator.update`;
:meth:`synchronize_between_processes` gathers them on every rank
(``common.distributed.all_gather_object``), keeps one copy per image id (a distributed sampler
repeats images to even out the shards), and :meth:`accumulate` runs ``COCOeval`` once on the
union. ``coco_eval["bbox"].stats`` then holds the 12 standard numbers and
``coco_eval["bbox"].eval`` the precision/recall arrays. ``iou_types`` ``("bbox",)`` (DAC-DETR) or
``("bbox", "segm")`` (Mask R-CNN: the predictions carry ``masks``, ``(N, 1, H, W)`` probabilities or
``(N, H, W)``, binarised at 0.5 and RLE-encoded).
"""
import contextlib
import copy
import io

import numpy as np
import torch

from common.distributed import all_gather_object

__all__ = ["CocoEvaluator", "convert_to_xywh", "STAT_NAMES"]

STAT_NAMES = [
    "AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
]


def convert_to_xywh(boxes):
    x0, y0, x1, y1 = boxes.unbind(1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=1)


class CocoEvaluator:
    def __init__(self, coco_gt, iou_types=("bbox",)):
        from pycocotools.cocoeval import COCOeval

        assert isinstance(iou_types, (list, tuple))
        for t in iou_types:
            if t not in ("bbox", "segm"):
                raise ValueError(f"only 'bbox' and 'segm' evaluation are implemented, got {t!r}")
        self.coco_gt = copy.deepcopy(coco_gt)
        self.iou_types = tuple(iou_types)
        self.coco_eval = {t: COCOeval(self.coco_gt, iouType=t) for t in self.iou_types}
        self.img_ids = []
        self.results = {t: [] for t in self.iou_types}
        self._synced = False

    def update(self, predictions):
        """``predictions``: {image_id: {"scores": (N,), "labels": (N,), "boxes": (N, 4) xyxy abs}}."""
        self.img_ids.extend(int(i) for i in predictions.keys())
        for t in self.iou_types:
            prepare = self.prepare_for_coco_segmentation if t == "segm" else self.prepare_for_coco_detection
            self.results[t].extend(prepare(predictions))

    @staticmethod
    def prepare_for_coco_detection(predictions):
        out = []
        for image_id, pred in predictions.items():
            if len(pred) == 0 or len(pred["boxes"]) == 0:
                continue
            boxes = convert_to_xywh(pred["boxes"].detach().float().cpu()).tolist()
            scores = pred["scores"].detach().float().cpu().tolist()
            labels = pred["labels"].detach().cpu().tolist()
            out.extend(
                {"image_id": int(image_id), "category_id": int(labels[k]), "bbox": box, "score": scores[k]}
                for k, box in enumerate(boxes)
            )
        return out

    @classmethod
    def prepare_for_coco_segmentation(cls, predictions):
        """The detections with their masks as RLE ``segmentation`` (``predictions[...]['masks']``)."""
        from pycocotools import mask as mask_utils

        out = []
        for image_id, pred in predictions.items():
            dets = cls.prepare_for_coco_detection({image_id: pred})
            if not dets:
                continue
            masks = pred["masks"].detach().float().cpu()
            masks = (masks[:, 0] if masks.dim() == 4 else masks) > 0.5
            for det, m in zip(dets, masks.numpy().astype(np.uint8)):
                rle = mask_utils.encode(np.asfortranarray(m))
                rle["counts"] = rle["counts"].decode("ascii")
                out.append(dict(det, segmentation=rle))
        return out

    def synchronize_between_processes(self, gather=None):
        """Gather every rank's image ids and detections; de-duplicate repeated images. ``gather``: a
        function object -> list of every rank's object (default ``common.distributed.all_gather_object``;
        another framework's collective can be passed)."""
        gathered = (gather or all_gather_object)((self.img_ids, self.results))
        seen, img_ids = set(), []
        results = {t: [] for t in self.iou_types}
        for ids, res in gathered:
            new = {i for i in ids if i not in seen}
            img_ids.extend(sorted(new))
            for t in self.iou_types:
                results[t].extend(r for r in res[t] if r["image_id"] in new)
            seen |= new
        self.img_ids = sorted(set(img_ids))
        self.results = results
        self._synced = True

    def _load_detections(self, results):
        from pycocotools.coco import COCO

        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.coco_gt.loadRes(copy.deepcopy(results))
        empty = COCO()
        empty.dataset = {"images": copy.deepcopy(self.coco_gt.dataset["images"]), "annotations": [],
                         "categories": copy.deepcopy(self.coco_gt.dataset.get("categories", []))}
        with contextlib.redirect_stdout(io.StringIO()):
            empty.createIndex()
        return empty

    def accumulate(self):
        if not self._synced:
            self.synchronize_between_processes()
        for t, coco_eval in self.coco_eval.items():
            coco_eval.cocoDt = self._load_detections(self.results[t])
            coco_eval.params.imgIds = list(self.img_ids)
            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval.evaluate()
                coco_eval.accumulate()

    def summarize(self):
        """Print the standard 12-line COCO table (and fill ``coco_eval[t].stats``)."""
        for t, coco_eval in self.coco_eval.items():
            print(f"IoU metric: {t}")
            coco_eval.summarize()

    def stats(self, iou_type="bbox"):
        """{name: value} of the 12 numbers (after summarize)."""
        return dict(zip(STAT_NAMES, np.asarray(self.coco_eval[iou_type].stats).tolist()))
