"""Datasets of DAC-DETR: COCO 2017 detection (and the offline digits demo in the same format)."""
import torch.utils.data

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


def _nested_from_list(tensors):
    try:
        from dacdetr.util.misc import nested_tensor_from_tensor_list
    except ImportError:  # the model package's NestedTensor is the one the detector expects
        from ._nested import nested_tensor_from_tensor_list
    return nested_tensor_from_tensor_list(tensors)


def collate_fn(batch):
    """[(image, target), ...] -> (NestedTensor of zero-padded images + padding mask, (targets...))."""
    images, targets = zip(*batch)
    return _nested_from_list(list(images)), targets
