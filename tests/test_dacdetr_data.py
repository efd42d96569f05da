"""DAC-DETR data path: the digits demo set in COCO layout, COCO loading, transforms, COCO evaluation."""
import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from dacdetr.datasets import build_dataset, collate_fn, get_coco_api_from_dataset
from dacdetr.datasets import transforms as T
from dacdetr.datasets.coco import CocoPathError, ConvertCocoPolysToMask, check_coco_root, make_coco_transforms
from dacdetr.datasets.coco_eval import CocoEvaluator
from dacdetr.datasets.demo import build_demo_coco


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_demo")
    build_demo_coco(root, n_train=16, n_val=6, seed=0)
    return root


def _args(root, **kw):
    base = dict(coco_path=str(root), dataset_file="coco", masks=False, cache_mode=False, input_scale=0.25)
    base.update(kw)
    return SimpleNamespace(**base)


# ---------------------------------------------------------------- demo set
def test_demo_layout_and_json(demo_root):
    for split, n in (("train", 16), ("val", 6)):
        ann = json.loads((demo_root / "annotations" / f"instances_{split}2017.json").read_text())
        assert len(ann["images"]) == n
        assert [c["id"] for c in ann["categories"]] == list(range(1, 11))
        assert [c["name"] for c in ann["categories"]] == [str(d) for d in range(10)]
        per_image = {}
        for a in ann["annotations"]:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
            assert 1 <= a["category_id"] <= 10 and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and a["area"] == w * h
        for im in ann["images"]:
            assert 1 <= per_image[im["id"]] <= 4
            assert 128 <= im["width"] <= 192 and 128 <= im["height"] <= 192
            with Image.open(demo_root / f"{split}2017" / im["file_name"]) as pil:
                assert pil.size == (im["width"], im["height"])
                for a in ann["annotations"]:
                    if a["image_id"] == im["id"]:
                        x, y, w, h = a["bbox"]
                        assert x + w <= im["width"] and y + h <= im["height"]


def test_demo_label_matches_sklearn_and_splits_are_disjoint(demo_root):
    from sklearn.datasets import load_digits

    target = load_digits().target
    used = {}
    for split in ("train", "val"):
        ann = json.loads((demo_root / "annotations" / f"instances_{split}2017.json").read_text())
        used[split] = {a["digit_index"] for a in ann["annotations"]}
        for a in ann["annotations"]:
            assert a["category_id"] == int(target[a["digit_index"]]) + 1
    assert used["train"] and used["val"] and not (used["train"] & used["val"])


def test_demo_is_deterministic(demo_root, tmp_path):
    build_demo_coco(tmp_path, n_train=16, n_val=6, seed=0)
    for rel in ("annotations/instances_train2017.json", "annotations/instances_val2017.json",
                "train2017/000000000003.png", "val2017/000000100002.png"):
        assert (tmp_path / rel).read_bytes() == (demo_root / rel).read_bytes()


def test_demo_command_text():
    from dacdetr.datasets import coco, demo

    assert coco.DEMO_COMMAND == demo.DEMO_COMMAND


def test_demo_cli(tmp_path):
    from dacdetr.datasets.demo import main

    main(["--out", str(tmp_path / "d"), "--n_train", "2", "--n_val", "1"])
    assert len(list((tmp_path / "d" / "train2017").glob("*.png"))) == 2
    assert (tmp_path / "d" / "annotations" / "instances_val2017.json").exists()


# ---------------------------------------------------------------- COCO loading
def test_dataset_matches_json(demo_root):
    ds = build_dataset("val", _args(demo_root))
    ds._transforms = None  # raw targets: absolute xyxy
    ann = json.loads((demo_root / "annotations" / "instances_val2017.json").read_text())
    assert len(ds) == 6 and ds.ids == sorted(im["id"] for im in ann["images"])
    for idx in range(len(ds)):
        img, t = ds[idx]
        im = next(i for i in ann["images"] if i["id"] == ds.ids[idx])
        anns = [a for a in ann["annotations"] if a["image_id"] == im["id"]]
        expect = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        assert img.size == (im["width"], im["height"])
        assert torch.equal(t["boxes"], expect.float())
        assert t["labels"].tolist() == [a["category_id"] for a in anns]
        assert t["image_id"].tolist() == [im["id"]]
        assert t["orig_size"].tolist() == [im["height"], im["width"]] == t["size"].tolist()
        assert t["area"].tolist() == [a["area"] for a in anns]


def test_dataset_with_val_transforms_and_collate(demo_root):
    ds = build_dataset("val", _args(demo_root))
    img, t = ds[0]
    h0, w0 = t["orig_size"].tolist()
    # val transform: shorter side -> round(800 * 0.25) = 200, longer capped at round(1333 * 0.25) = 333
    assert min(img.shape[1:]) == 200 and tuple(t["size"].tolist()) == tuple(img.shape[1:])
    assert (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()
    samples, targets = collate_fn([ds[0], ds[1]])
    assert samples.tensors.shape[0] == 2 and len(targets) == 2
    for k, (_, tk) in enumerate([ds[0], ds[1]]):
        h, w = tk["size"].tolist()
        assert not samples.mask[k, :h, :w].any() and samples.mask[k, h:, :].all() and samples.mask[k, :, w:].all()
    assert get_coco_api_from_dataset(torch.utils.data.Subset(ds, [0])) is ds.coco


def test_convert_coco_polys_drops_crowd_and_degenerate():
    img = Image.new("RGB", (100, 50))
    anns = [
        {"bbox": [10, 5, 20, 10], "category_id": 3, "area": 200, "iscrowd": 0},
        {"bbox": [0, 0, 5, 5], "category_id": 4, "area": 25, "iscrowd": 1},       # crowd -> dropped
        {"bbox": [90, 40, 30, 30], "category_id": 5, "area": 900, "iscrowd": 0},  # clipped to the image
        {"bbox": [30, 30, 0, 10], "category_id": 6, "area": 0, "iscrowd": 0},     # zero width -> dropped
    ]
    _, t = ConvertCocoPolysToMask()(img, {"image_id": 7, "annotations": anns})
    assert t["boxes"].tolist() == [[10, 5, 30, 15], [90, 40, 100, 50]]
    assert t["labels"].tolist() == [3, 5] and t["area"].tolist() == [200, 900]
    assert t["iscrowd"].tolist() == [0, 0] and t["image_id"].tolist() == [7]
    assert t["orig_size"].tolist() == [50, 100]


def test_missing_coco_path_message(tmp_path):
    with pytest.raises(CocoPathError) as e:
        check_coco_root(tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "instances_train2017.json" in msg
    assert "python -m dacdetr.datasets.demo" in msg
    (tmp_path / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="train2017"):
        build_dataset("train", _args(tmp_path / "c"))


# ---------------------------------------------------------------- transforms
def _target(boxes, w, h):
    b = torch.tensor(boxes, dtype=torch.float32)
    return {"boxes": b, "labels": torch.arange(len(b)), "area": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
            "iscrowd": torch.zeros(len(b), dtype=torch.int64), "size": torch.tensor([h, w])}


def test_hflip_known_box():
    img = Image.new("RGB", (100, 60))
    img.putpixel((10, 20), (255, 0, 0))
    out, t = T.hflip(img, _target([[10, 20, 30, 50]], 100, 60))
    assert t["boxes"].tolist() == [[70, 20, 90, 50]]
    assert out.getpixel((89, 20)) == (255, 0, 0)
    _, t2 = T.hflip(out, t)
    assert t2["boxes"].tolist() == [[10, 20, 30, 50]]


def test_resize_scales_boxes_and_area():
    img = Image.new("RGB", (200, 100))
    out, t = T.resize(img, _target([[20, 10, 60, 50]], 200, 100), 50)
    assert out.size == (100, 50) and t["size"].tolist() == [50, 100]
    assert t["boxes"].tolist() == [[10, 5, 30, 25]] and t["area"].tolist() == [400.0]
    # max_size caps the longer side: short 80 -> long 160 > 150, so short = round(150 * 100 / 200) = 75; (h, w)
    assert T.get_size_with_aspect_ratio((200, 100), 80, max_size=150) == (75, 150)
    assert T.get_size_with_aspect_ratio((640, 480), 800, max_size=1333) == (800, 1066)
    out, t = T.resize(img, _target([[20, 10, 60, 50]], 200, 100), (50, 40))  # explicit (w, h)
    assert out.size == (50, 40) and torch.allclose(t["boxes"], torch.tensor([[5.0, 4, 15, 20]]))


def test_crop_shifts_clips_and_drops():
    img = Image.new("RGB", (100, 100))
    t = _target([[10, 10, 30, 30], [50, 50, 90, 90], [0, 0, 5, 5]], 100, 100)
    out, c = T.crop(img, t, (20, 20, 50, 50))  # top, left, h, w
    assert out.size == (50, 50) and c["size"].tolist() == [50, 50]
    assert c["boxes"].tolist() == [[0, 0, 10, 10], [30, 30, 50, 50]]  # third box fell outside
    assert c["labels"].tolist() == [0, 1] and c["area"].tolist() == [100, 400]


def test_normalize_to_cxcywh():
    img = torch.rand(3, 40, 80)
    _, t = T.Normalize([0.5] * 3, [0.5] * 3)(img, {"boxes": torch.tensor([[8.0, 4, 24, 36]])})
    assert torch.allclose(t["boxes"], torch.tensor([[16 / 80, 20 / 40, 16 / 80, 32 / 40]]))


def test_train_transform_keeps_boxes_on_the_digits(demo_root):
    """After the full random train augmentation, every box still frames bright (ink) pixels."""
    ds = build_dataset("train", _args(demo_root))
    random.seed(3)
    torch.manual_seed(3)
    for idx in range(6):
        img, t = ds[idx]
        h, w = img.shape[1:]
        assert t["size"].tolist() == [h, w]
        assert 0.25 * 384 - 1 <= min(h, w) <= 200 and max(h, w) <= 334
        for cx, cy, bw, bh in t["boxes"].tolist():
            x0, x1 = int((cx - bw / 2) * w), int(np.ceil((cx + bw / 2) * w))
            y0, y1 = int((cy - bh / 2) * h), int(np.ceil((cy + bh / 2) * h))
            inside = img[:, y0:y1, x0:x1]
            assert inside.numel() > 0 and inside.max() > img.mean()


def test_official_transform_sizes():
    tr = make_coco_transforms("train")
    sel = tr.transforms[1]
    assert sel.transforms1.sizes == list(range(480, 801, 32)) and sel.transforms1.max_size == 1333
    assert sel.transforms2.transforms[0].sizes == [400, 500, 600]
    assert (sel.transforms2.transforms[1].min_size, sel.transforms2.transforms[1].max_size) == (384, 600)
    val = make_coco_transforms("val")
    assert val.transforms[0].sizes == [800] and val.transforms[0].max_size == 1333
    assert make_coco_transforms("val", 0.25).transforms[0].sizes == [200]
    with pytest.raises(ValueError):
        make_coco_transforms("test")


# ---------------------------------------------------------------- COCO evaluation
def _gt_coco(n_images=3):
    from pycocotools.coco import COCO

    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 400, "height": 300, "file_name": f"{i}.png"})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [50.0, 60.0, 100.0, 100.0],
                     "area": 10000.0, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco.createIndex()
    return coco


def _preds(coco, dx=0.0):
    out = {}
    for img_id in coco.getImgIds():
        a = coco.loadAnns(coco.getAnnIds(imgIds=img_id))[0]
        x, y, w, h = a["bbox"]
        out[img_id] = {"boxes": torch.tensor([[x + dx, y, x + dx + w, y + h]]),
                       "scores": torch.tensor([0.9]), "labels": torch.tensor([a["category_id"]])}
    return out


def _run(coco, preds_list):
    ev = CocoEvaluator(coco, ("bbox",))
    for p in preds_list:
        ev.update(p)
    ev.synchronize_between_processes()
    ev.accumulate()
    ev.summarize()
    return ev.coco_eval["bbox"].stats


def test_coco_eval_perfect_predictions():
    coco = _gt_coco()
    stats = _run(coco, [_preds(coco)])
    assert stats[0] == pytest.approx(1.0) and stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(1.0)
    assert stats[8] == pytest.approx(1.0)  # AR@100


def test_coco_eval_shifted_boxes_known_value():
    # a 100x100 box shifted by 16 px: IoU = 84 / 116 = 0.724 -> matched at IoU 0.50..0.70 (5 of 10 thresholds)
    coco = _gt_coco()
    stats = _run(coco, [_preds(coco, dx=16.0)])
    assert stats[0] == pytest.approx(0.5)
    assert stats[1] == pytest.approx(1.0) and stats[2] == pytest.approx(0.0)
    # wrong class: nothing matches
    wrong = {k: dict(v, labels=3 - v["labels"]) for k, v in _preds(coco).items()}
    assert _run(coco, [wrong])[0] == pytest.approx(0.0)


def test_coco_eval_merges_ranks(monkeypatch):
    """Two ranks' detections (with one image evaluated on both, as a padded sampler does) give
    the same numbers as one process seeing everything once."""
    import common.coco_eval as ce  # dacdetr.datasets.coco_eval re-exports it

    coco = _gt_coco(4)
    preds = _preds(coco, dx=16.0)
    preds[3] = _preds(coco)[3]
    whole = _run(coco, [preds]).copy()

    rank0 = CocoEvaluator(coco)
    rank0.update({k: preds[k] for k in (1, 2)})
    rank1 = CocoEvaluator(coco)
    rank1.update({k: preds[k] for k in (3, 4, 1)})
    monkeypatch.setattr(ce, "all_gather_object", lambda obj: [(rank0.img_ids, rank0.results), obj])
    rank1.synchronize_between_processes()
    assert rank1.img_ids == [1, 2, 3, 4] and len(rank1.results["bbox"]) == 4
    rank1.accumulate()
    rank1.summarize()
    np.testing.assert_allclose(rank1.coco_eval["bbox"].stats, whole)


def test_coco_eval_no_detections():
    coco = _gt_coco()
    empty = {i: {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
             for i in coco.getImgIds()}
    stats = _run(coco, [empty])
    assert stats[0] == 0.0 or stats[0] == -1.0
