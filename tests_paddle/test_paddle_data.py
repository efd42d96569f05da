"""The NumPy / PIL COCO pipeline of the Paddle port against the PyTorch one (dacdetr.datasets): same
images and targets for the val transform, and for the train augmentation given the same draws."""
import random

import numpy as np
import pytest

from dacdetr.datasets import build_dataset
from dacdetr.datasets.demo import build_demo_coco
from dacdetr.main import get_args_parser
from dacdetr.paddle import data as pdata

KEYS = ("boxes", "labels", "image_id", "area", "iscrowd", "orig_size", "size")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("paddle_data")
    build_demo_coco(root, n_train=6, n_val=3, seed=2)
    return root


def _assert_same(np_item, torch_item):
    (img, target), (t_img, t_target) = np_item, torch_item
    assert img.dtype == np.float32 and img.shape == tuple(t_img.shape)
    np.testing.assert_array_equal(img, t_img.numpy())
    assert set(target) == set(t_target)
    for k in KEYS:
        expected = t_target[k].numpy()
        assert target[k].shape == expected.shape, k
        if k in ("boxes", "area"):
            np.testing.assert_allclose(target[k], expected, rtol=1e-6, atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(target[k], expected, err_msg=k)


def test_val_items_equal_the_pytorch_pipeline(demo):
    args = get_args_parser().parse_args(["--coco_path", str(demo), "--input_scale", "0.16"])
    ours, theirs = pdata.build("val", args), build_dataset("val", args)
    assert len(ours) == len(theirs) == 3 and ours.ids == theirs.ids
    for i in range(len(ours)):
        _assert_same(ours[i], theirs[i])


def test_train_augmentation_equals_the_pytorch_pipeline_for_the_same_draws(demo, monkeypatch):
    """Flip, branch, sizes and crop size come from ``random`` in the same order on both sides; the crop
    position (torch.randint in torchvision) is drawn from ``random`` on the PyTorch side too here."""
    import torchvision.transforms as TV

    monkeypatch.setattr(TV.RandomCrop, "get_params", staticmethod(
        lambda img, size: (random.randint(0, img.height - size[0]), random.randint(0, img.width - size[1]),
                           size[0], size[1])))
    crops = []
    original = pdata._random_size_crop
    monkeypatch.setattr(pdata, "_random_size_crop", lambda *a: crops.append(1) or original(*a))
    args = get_args_parser().parse_args(["--coco_path", str(demo), "--input_scale", "0.25"])
    ours, theirs = pdata.build("train", args), build_dataset("train", args)
    sizes = set()
    for draw in range(12):
        i = draw % len(ours)
        random.seed(draw)
        item = ours[i]
        random.seed(draw)
        _assert_same(item, theirs[i])
        sizes.add(item[0].shape)
    assert len(sizes) > 3 and 0 < len(crops) < 12  # several scales, both branches


def test_crop_drops_objects_outside_and_clips_the_rest():
    from PIL import Image

    img = Image.new("RGB", (40, 30))
    target = {"boxes": np.array([[2, 2, 10, 10], [30, 20, 38, 28], [15, 5, 35, 25]], np.float32),
              "labels": np.array([1, 2, 3]), "area": np.array([64, 64, 400], np.float32),
              "iscrowd": np.zeros(3, np.int64), "size": np.array([30, 40])}
    out, t = pdata.crop(img, target, (4, 12, 20, 16))  # top 4, left 12, 20 high, 16 wide
    assert out.size == (16, 20)
    assert t["labels"].tolist() == [3]
    np.testing.assert_array_equal(t["boxes"], [[3, 1, 16, 20]])
    assert t["area"].tolist() == [13 * 19] and t["size"].tolist() == [20, 16]
