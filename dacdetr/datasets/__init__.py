"""Datasets of DAC-DETR: COCO 2017 detection (and the offline digits demo in the same format)."""
import torch.utils.data

from dacdetr.util.misc import collate_fn  # [(image, target), ...] -> (NestedTensor, (targets...))

from .coco import CocoDetection, CocoPathError, build as build_coco

__all__ = ["build_dataset", "get_coco_api_from_dataset", "collate_fn", "CocoDetection", "CocoPathError"]


def get_coco_api_from_dataset(dataset):
    """The pycocotools ``COCO`` object behind a (possibly Subset-wrapped) CocoDetection."""
    for _ in range(10):
        if isinstance(dataset, torch.utils.data.Subset):
            dataset = dataset.dataset
    if isinstance(dataset, CocoDetection):
        return dataset.coco
    return None


def build_dataset(image_set, args, eval_in_training_set=False):
    if args.dataset_file == "coco":
        return build_coco(image_set, args, eval_in_training_set)
    raise ValueError(f"dataset {args.dataset_file!r} not supported (only 'coco' detection is implemented)")
