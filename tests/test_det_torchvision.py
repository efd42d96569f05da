"""torchvision detection with the papers' backbones (common.detection, <paper>.detection): a small Faster R-CNN
per backbone trains a few iterations on the digits COCO demo and is evaluated with pycocotools; Mask R-CNN
once; the per-paper entry points and the demo command line."""
import contextlib
import io
import math

import pytest
import torch

from common.demo_coco import build_demo_coco
from common.detection import STAT_NAMES, FPNBackbone, build_detector, run_demo


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_demo")
    build_demo_coco(root, n_train=8, n_val=4, seed=0)
    return str(root)


def _check_stats(stats):
    assert len(stats) == len(STAT_NAMES) == 12
    assert all(isinstance(v, float) and -1.0 <= v <= 1.0 for v in stats)


@pytest.mark.parametrize("spec", ["dla:ResNet_dlal", "rlanet:RLA_ResNet", "dwnet:DWNet"])
def test_fasterrcnn_trains_and_evaluates(spec, demo_root):
    """8 SGD steps (batch 2, 128-192 px) from scratch: every loss finite, the last two below the first two;
    COCOeval returns its 12 numbers."""
    lines = []
    res = run_demo(spec, "fasterrcnn", data=demo_root, iterations=8, log=lines.append)
    losses = res["losses"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2])
    _check_stats(res["stats"]["bbox"])
    table = "\n".join(lines)
    assert "IoU metric: bbox" in table and "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all" in table


def test_maskrcnn_trains_and_evaluates(demo_root):
    """Mask R-CNN (masks from the COCO polygons): finite losses, bbox and segm evaluated."""
    res = run_demo("dwnet:DWNet", "maskrcnn", data=demo_root, iterations=4, log=lambda *_: None)
    assert all(math.isfinite(v) for v in res["losses"])
    assert set(res["stats"]) == {"bbox", "segm"}
    for stats in res["stats"].values():
        _check_stats(stats)


def test_paper_entry_points(tmp_path):
    """<paper>.detection.fasterrcnn / maskrcnn: the official backbone configuration by default (frozen stem
    and stage 1, BatchNorms in eval), overridable; pretrained_backbone loads through init_weights."""
    import dla.detection
    import dwnet.detection
    import rlanet.detection

    assert dla.detection.BACKBONE_KWARGS == dict(layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True,
                                                 style="pytorch")
    assert rlanet.detection.BACKBONE_KWARGS["frozen_stages"] == 1
    model = rlanet.detection.fasterrcnn(num_classes=5, backbone_kwargs=dict(layers=[1, 1, 1, 1]), min_size=64,
                                        max_size=96)
    body = model.backbone.body
    assert isinstance(model.backbone, FPNBackbone) and body.frozen_stages == 1
    model.train()
    assert not body.conv1.weight.requires_grad and not body.stages[0][0].conv1.weight.requires_grad
    assert not body.stages[1][0].bn1.training
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 70, 90)])
    assert set(out[0]) == {"boxes", "labels", "scores"}
    # a backbone checkpoint through init_weights
    src = dwnet.create_backbone("DWNet", embed_dim=32, depths=[1, 1, 1, 1])
    path = tmp_path / "dw.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    mask = dwnet.detection.maskrcnn(num_classes=3, backbone_kwargs=dict(embed_dim=32, depths=[1, 1, 1, 1]),
                                    pretrained_backbone=str(path))
    assert torch.equal(mask.backbone.body.layers[2].blocks[0].attn2conv.conv.weight,
                       src.layers[2].blocks[0].attn2conv.conv.weight)
    assert mask.backbone.body.load_report.complete
    # the FPN may read a subset of the maps
    det = build_detector("fasterrcnn", dla.create_backbone("ResNet_dlal", layers=[1, 1, 1, 1]), num_classes=3,
                         returned=(1, 2, 3), anchor_sizes=(32, 64, 128, 256), min_size=64, max_size=64).eval()
    with torch.no_grad():
        assert len(det.backbone(torch.rand(1, 3, 64, 64))) == 4


def test_demo_command_line(demo_root, capsys):
    """``python -m dwnet.detection --demo``: trains, prints the COCO table and the 12 numbers as JSON; bad
    arguments exit 2."""
    import json

    import dwnet.detection
    from common.detection import demo_main

    assert dwnet.detection.main(["--demo", "--data", demo_root, "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "Average Precision" in out or "no detections" in out
    assert list(json.loads(out.strip().splitlines()[-1])["bbox"]) == list(STAT_NAMES)
    for argv in ([], ["--demo", "--iters", "0"]):
        with pytest.raises(SystemExit) as exc:
            dwnet.detection.main(argv)
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        demo_main(["--backbone", "nope:X", "--demo"])
    assert exc.value.code == 2
    assert demo_main(["--backbone", "dwnet:DWNet", "--demo", "--data", str(demo_root) + "/missing_split/x",
                      "--iters", "1", "--n_train", "1", "--n_val", "1"]) == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["dla:ResNet_dlal", "rlanet:RLA_ResNet", "dwnet:DWNet"])
def test_detector_on_cuda(spec):
    """The small detectors train a step and predict on the GPU (no state is created on the CPU)."""
    from common.detection import DEMO_DETECTOR, demo_backbone

    model = build_detector("fasterrcnn", demo_backbone(spec), **DEMO_DETECTOR).cuda().train()
    images = [torch.rand(3, 130, 170, device="cuda"), torch.rand(3, 150, 128, device="cuda")]
    targets = [dict(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]], device="cuda"),
                    labels=torch.tensor([3], device="cuda")) for _ in images]
    loss = sum(model(images, targets).values())
    loss.backward()
    assert math.isfinite(loss.item())
    with torch.no_grad():
        out = model.eval()(images)
    assert out[0]["boxes"].device.type == "cuda"


def test_coco_evaluator_masks_known_values(demo_root):
    """common.coco_eval with iou_types ('bbox', 'segm'): the ground truth as predictions scores AP 1 for both;
    masks shifted off their objects score 0 for segm while the boxes still score 1."""
    import os

    from common.coco_eval import CocoEvaluator
    from common.detection import CocoDetectionSet

    ds = CocoDetectionSet(os.path.join(demo_root, "val2017"), os.path.join(demo_root, "annotations",
                                                                          "instances_val2017.json"), masks=True)

    def run(shift):
        ev = CocoEvaluator(ds.coco, ("bbox", "segm"))
        for i in range(len(ds)):
            _, t = ds[i]
            masks = torch.roll(t["masks"], shifts=shift, dims=2).float()[:, None]
            ev.update({t["image_id"]: dict(boxes=t["boxes"], labels=t["labels"], scores=torch.ones(len(t["labels"])),
                                           masks=masks)})
        ev.accumulate()
        with contextlib.redirect_stdout(io.StringIO()):
            ev.summarize()
        return ev.coco_eval["bbox"].stats, ev.coco_eval["segm"].stats

    box, segm = run(0)
    assert box[0] == pytest.approx(1.0) and segm[0] == pytest.approx(1.0)
    box, segm = run(100)
    assert box[0] == pytest.approx(1.0) and segm[1] == pytest.approx(0.0)
