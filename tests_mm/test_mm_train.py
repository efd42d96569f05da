"""Real OpenMMLab runs with the papers' backbones: a Faster R-CNN with each backbone (the papers' configs with
small widths and inputs) trains a few iterations with mmengine's Runner on the digits COCO demo set and is
evaluated with mmdet's CocoMetric; an mmseg UperNet with the DWNet backbone (the paper's config, small) runs
forward / backward on a tiny segmentation batch, its backbone initialised through ``model.pretrained``."""
import math
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from common.demo_coco import DEMO_CATEGORIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = tuple(c["name"] for c in DEMO_CATEGORIES)  # "0" .. "9", category ids 1 .. 10
SIZE = (160, 160)


def _loader(root, split, pipeline, shuffle):
    return dict(batch_size=2, num_workers=0, persistent_workers=False,
                sampler=dict(type="DefaultSampler", shuffle=shuffle),
                dataset=dict(type="CocoDataset", data_root=str(root), metainfo=dict(classes=CLASSES),
                             ann_file=f"annotations/instances_{split}2017.json", data_prefix=dict(img=f"{split}2017/"),
                             filter_cfg=dict(filter_empty_gt=False), pipeline=pipeline))


def _small_run(cfg, backbone, channels, root, work_dir, iters=4):
    """The config with a small backbone, narrow FPN / heads, 10 classes, the demo set and a short schedule."""
    cfg.model.backbone = backbone
    cfg.model.neck.update(in_channels=channels, out_channels=32)
    cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
    cfg.model.roi_head.bbox_roi_extractor.out_channels = 32
    cfg.model.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=len(CLASSES))
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=300, max_per_img=150)
    cfg.model.train_cfg.rcnn.sampler.num = 128
    cfg.model.test_cfg.rpn.update(nms_pre=300, max_per_img=150)
    train = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
             dict(type="Resize", scale=SIZE, keep_ratio=True), dict(type="RandomFlip", prob=0.5),
             dict(type="PackDetInputs")]
    test = [dict(type="LoadImageFromFile"), dict(type="Resize", scale=SIZE, keep_ratio=True),
            dict(type="LoadAnnotations", with_bbox=True),
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]
    cfg.train_dataloader = _loader(root, "train", train, True)
    cfg.val_dataloader = cfg.test_dataloader = _loader(root, "val", test, False)
    cfg.val_evaluator = cfg.test_evaluator = dict(
        type="CocoMetric", ann_file=str(root / "annotations" / "instances_val2017.json"), metric="bbox")
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=1000)  # evaluated once, below
    cfg.param_scheduler = []
    cfg.optim_wrapper.optimizer.lr = 0.01
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=10 * iters, save_last=False)
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)
    return cfg


def _dwnet_faster_rcnn(tmp_path):
    """DWNet has no Faster R-CNN config of its own: mmdet's, with the plugin, written as a user would."""
    path = tmp_path / "faster_rcnn_dwnet_fpn_1x_coco.py"
    path.write_text("_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'\n"
                    "custom_imports = dict(imports=['dwnet.mmdet'], allow_failed_imports=False)\n"
                    "model = dict(backbone=dict(_delete_=True, type='DWNet'))\n")
    return str(path)


TRAIN = {
    "dla": ("dla/configs/mmdet/faster_rcnn/faster_rcnn_r50dlal_fpn_1x_coco.py",
            dict(type="ResNet_dlal", layers=[1, 1, 1, 1], frozen_stages=1, norm_eval=True, style="pytorch"),
            [256, 512, 1024, 2048]),
    "rlanet": ("rlanet/configs/mmdet/faster_rcnn_r50rla_fpn_1x_coco.py",
               dict(type="RLA_ResNet", layers=[1, 1, 1, 1], frozen_stages=1, norm_eval=True, style="pytorch"),
               [256, 512, 1024, 2048]),
    "dwnet": (None, dict(type="DWNet", embed_dim=32, depths=[1, 1, 1, 1], window_size=7, drop_path_rate=0.1,
                         dynamic=True), [32, 64, 128, 256]),
}


@pytest.mark.parametrize("paper", list(TRAIN))
def test_faster_rcnn_trains_and_evaluates_on_the_demo_set(paper, demo_coco, tmp_path):
    from mmengine.runner import Runner

    path, backbone, channels = TRAIN[paper]
    path = os.path.join(ROOT, path) if path else _dwnet_faster_rcnn(tmp_path)
    cfg = _small_run(Config.fromfile(path), backbone, channels, demo_coco, tmp_path / "work")
    init_default_scope("mmdet")
    runner = Runner.from_cfg(cfg)
    assert type(runner.model.backbone).__module__ == f"{paper}.mmdet"
    runner.train()
    losses = runner.message_hub.get_scalar("train/loss").data[0]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses
    metrics = runner.val_loop.run()  # mmdet's CocoMetric on the 8 val images (pycocotools)
    keys = [f"coco/bbox_mAP{s}" for s in ("", "_50", "_75", "_s", "_m", "_l")]
    assert set(keys) <= set(metrics)
    assert all(-1.0 <= metrics[k] <= 1.0 for k in keys)


def test_upernet_dwnet_forward_backward(tmp_path):
    """The UperNet config (mmseg 1.x) with a small DWNet: loss forward / backward on a 2-image batch, gradients
    reach the backbone; the official ``model.pretrained=<checkpoint>`` initialises the backbone; predictions
    come back at the input size."""
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import dwnet

    cfg = Config.fromfile(os.path.join(ROOT, "dwnet/configs/mmseg/upernet_dwnet_tiny_patch4_window7_512x512_160k_ade20k.py"))
    small = dict(embed_dim=32, depths=[1, 1, 1, 1], window_size=7, drop_path_rate=0.1)
    src = dwnet.create_backbone("DWNet", **small)
    torch.nn.init.normal_(src.norm3.weight)
    ckpt = tmp_path / "dwnet_small.pth"
    torch.save({"model": src.state_dict()}, ckpt)
    cfg.model.pretrained = str(ckpt)
    cfg.model.backbone.update(small)
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model.decode_head.update(in_channels=[32, 64, 128, 256], channels=32, num_classes=5)
    cfg.model.auxiliary_head.update(in_channels=128, channels=16, num_classes=5)
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert torch.equal(model.backbone.norm3.weight, src.norm3.weight) and model.backbone.load_report.complete
    gen = torch.Generator().manual_seed(0)
    samples, images = [], []
    for h, w in ((60, 64), (64, 50)):
        images.append(torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8))
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 5, (1, h, w), generator=gen))
        samples.append(sample)
    model.train()
    data = model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
    assert data["inputs"].shape == (2, 3, 64, 64)
    losses = model(**data, mode="loss")
    assert {"decode.loss_ce", "aux.loss_ce"} <= set(losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    with torch.no_grad():
        test = model.data_preprocessor(dict(inputs=images[:1], data_samples=samples[:1]), training=False)
        pred = model(**test, mode="predict")
    assert pred[0].pred_sem_seg.data.shape == (1, 60, 64)
