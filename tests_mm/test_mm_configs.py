"""Every mmdetection / mmsegmentation config of the papers parses (its custom_imports load the plugin) and builds
its model, with the official backbone arguments, and the parameter counts of the papers' tables."""
import glob
import os

import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _configs(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


DET = (_configs("dla/configs/mmdet/*/*.py") + _configs("rlanet/configs/mmdet/*.py")
       + _configs("dwnet/configs/mmdet/*.py"))
SEG = _configs("dwnet/configs/mmseg/*.py")

# millions of parameters of the whole model, as the papers' tables give them (DWNet README)
PAPER_MPARAMS = {
    "cascade_mask_rcnn_dwnet_tiny": 82, "cascade_mask_rcnn_dwnet_base": 132,
    "cascade_mask_rcnn_dynamic_dwnet_tiny": 108, "cascade_mask_rcnn_dynamic_dwnet_base": 219,
    "upernet_dwnet_tiny": 56, "upernet_dwnet_base": 108, "upernet_dynamic_dwnet_tiny": 83,
    "upernet_dynamic_dwnet_base": 195,
}
# exact backbone parameter counts of the official detection backbones
BACKBONE_PARAMS = {"faster_rcnn_r50dlal": 25_963_368, "cascade_mask_rcnn_dwnet_tiny": 23_405_088,
                   "cascade_mask_rcnn_dynamic_dwnet_tiny": 50_364_096}


def _stem(path):
    name = os.path.basename(path)
    for tail in ("_fpn_1x_coco.py", "_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py",
                 "_patch4_window7_512x512_160k_ade20k.py"):
        name = name.replace(tail, "")
    return name


def test_every_paper_config_is_listed():
    assert len(DET) == 4 + 6 + 4 and len(SEG) == 4


def _build(path, scope):
    cfg = Config.fromfile(os.path.join(ROOT, path))  # imports custom_imports (the plugin), fails if it cannot
    assert cfg.default_scope == scope
    init_default_scope(scope)
    if scope == "mmdet":
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    plugin = cfg.custom_imports["imports"]
    assert cfg.custom_imports["allow_failed_imports"] is False and plugin == [f"{path.split('/')[0]}.{scope}"]
    model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert type(backbone).__module__ == plugin[0] and type(backbone) is MODELS.get(cfg.model.backbone.type)
    return cfg, model


def _count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("path", DET, ids=[_stem(p) for p in DET])
def test_mmdet_config_builds(path):
    cfg, model = _build(path, "mmdet")
    bb = cfg.model.backbone
    stem = _stem(path)
    head = model.roi_head if hasattr(model, "roi_head") else model.bbox_head
    if "dwnet" in stem:
        c = bb.embed_dim
        assert type(model).__name__ == "CascadeRCNN" and model.roi_head.num_stages == 3
        assert model.roi_head.with_mask and cfg.train_cfg.max_epochs == 36
        assert [h.reg_decoded_bbox for h in model.roi_head.bbox_head] == [True] * 3
        assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.type == "AmpOptimWrapper"
        assert (c, bb.depths, bb.drop_path_rate) == ((96, [2, 2, 6, 2], 0.2) if "tiny" in stem
                                                      else (128, [2, 2, 18, 2], 0.3))
        assert bb.dynamic == stem.startswith("cascade_mask_rcnn_dynamic")
        assert model.backbone.out_channels == [c, 2 * c, 4 * c, 8 * c] == list(cfg.model.neck.in_channels)
        assert round(_count(model) / 1e6) == PAPER_MPARAMS[stem]
    else:
        assert bb.frozen_stages == 1 and bb.norm_eval is True and bb.style == "pytorch"
        assert bb.init_cfg.type == "Pretrained" and bb.init_cfg.checkpoint.startswith("./pretrained/")
        assert model.backbone.out_channels == [256, 512, 1024, 2048] == list(cfg.model.neck.in_channels)
        assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[1].milestones == [8, 11]
        assert bb.layers == ([3, 4, 23, 3] if "r101" in stem else [3, 4, 6, 3])
        assert bb.get("ECA") == ([5, 5, 5, 7] if "rlaeca" in stem else None)
        kind = stem.rsplit("_r", 1)[0]
        assert type(model).__name__ == {"faster_rcnn": "FasterRCNN", "mask_rcnn": "MaskRCNN",
                                        "retinanet": "RetinaNet"}[kind]
        assert getattr(head, "with_mask", False) == (kind == "mask_rcnn")
        lr = cfg.optim_wrapper.optimizer.lr
        assert lr == (0.01 if kind == "retinanet" else 0.02)
    if stem in BACKBONE_PARAMS:
        assert _count(model.backbone) == BACKBONE_PARAMS[stem]


@pytest.mark.parametrize("path", SEG, ids=[_stem(p) for p in SEG])
def test_mmseg_config_builds(path):
    cfg, model = _build(path, "mmseg")
    bb = cfg.model.backbone
    stem = _stem(path)
    c = bb.embed_dim
    assert type(model).__name__ == "EncoderDecoder" and type(model.decode_head).__name__ == "UPerHead"
    assert (c, bb.depths, bb.drop_path_rate) == ((96, [2, 2, 6, 2], 0.3) if "tiny" in stem else
                                                  (128, [2, 2, 18, 2], 0.3))
    assert bb.dynamic == stem.startswith("upernet_dynamic")
    assert list(cfg.model.decode_head.in_channels) == [c, 2 * c, 4 * c, 8 * c]
    assert cfg.model.auxiliary_head.in_channels == 4 * c and cfg.model.auxiliary_head.in_index == 2
    assert model.decode_head.num_classes == 150 and cfg.train_cfg.max_iters == 160000
    assert cfg.optim_wrapper.optimizer.lr == 6e-5 and cfg.optim_wrapper.optimizer.weight_decay == 0.01
    assert round(_count(model) / 1e6) == PAPER_MPARAMS[stem]
