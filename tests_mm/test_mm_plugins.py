"""The OpenMMLab plugins (``dla.mmdet``, ``rlanet.mmdet``, ``dwnet.mmdet``, ``dwnet.mmseg``): registered under the
official names, the very backbones of ``create_backbone`` (keys, outputs, the official fingerprints), mmengine's
``init_cfg=dict(type='Pretrained')`` loading through the reporting loader, and the copy-in files."""
import importlib
import logging
import os
import shutil
import sys

import pytest
import torch
from mmengine.model import BaseModule
from mmengine.registry import init_default_scope

import dla
import dwnet
import rlanet
from common.fingerprint import det_init_, det_input, rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")

# (plugin module, registry module, official name, create_backbone, small official kwargs)
PLUGINS = [
    ("dla.mmdet", "mmdet.registry", "ResNet_dlal", dla.create_backbone, dict(layers=[1, 1, 1, 1], frozen_stages=1)),
    ("rlanet.mmdet", "mmdet.registry", "RLA_ResNet", rlanet.create_backbone,
     dict(layers=[1, 1, 1, 1], ECA=[3, 3, 3, 3], frozen_stages=1)),
    ("dwnet.mmdet", "mmdet.registry", "DWNet", dwnet.create_backbone, dict(embed_dim=32, depths=[1, 1, 1, 1])),
    ("dwnet.mmseg", "mmseg.registry", "DWNet", dwnet.create_backbone,
     dict(embed_dim=32, depths=[1, 1, 1, 1], dynamic=True)),
]
IDS = [p[0] for p in PLUGINS]


def _registered(plugin, registry, name):
    importlib.import_module(plugin)
    return importlib.import_module(registry).MODELS.get(name)


@pytest.mark.parametrize("plugin,registry,name,create,kw", PLUGINS, ids=IDS)
def test_plugin_is_the_create_backbone_module(plugin, registry, name, create, kw):
    """Registered under the official name, a BaseModule subclass of create_backbone's class: same keys and,
    with the same weights, the same stage maps (an input size that needs DWNet's padding)."""
    cls = _registered(plugin, registry, name)
    assert cls is getattr(importlib.import_module(plugin), name) and cls.__name__ == name
    assert issubclass(cls, BaseModule) and issubclass(cls, create.classes[name])
    scope = registry.split(".")[0]
    init_default_scope(scope)
    ours = importlib.import_module(registry).MODELS.build(dict(type=name, **kw))
    plain = create(name, **kw)
    assert type(ours) is cls and ours.init_cfg is None and not ours.is_init
    assert list(ours.state_dict()) == list(plain.state_dict())
    det_init_(plain)
    ours.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 75, 90)
    with torch.no_grad():
        a, b = ours.eval()(x), plain.eval()(x)
    assert isinstance(a, tuple) and len(a) == len(b) == 4
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    ours.train()  # frozen_stages / norm_eval behave as in create_backbone's module
    plain.train()
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in plain.parameters()]
    assert [m.training for m in ours.modules()] == [m.training for m in plain.modules()]
    ours.init_weights()
    assert ours.is_init


def _fingerprint(model, path):
    fp = torch.load(os.path.join(DATA, path), weights_only=True)
    model.eval()
    det_init_(model)
    model.double()
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == [(k, tuple(s)) for k, s, _ in fp["manifest"]]
    with torch.no_grad():
        return fp, model(det_input(fp["input_shape"], fp["seed"]))


def test_dla_plugin_reproduces_the_official_fingerprint():
    """The backbone of faster_rcnn_r50dlal_fpn_1x_coco.py, built by mmdet from the config, reproduces the
    official ResNet_dlal's float64 maps."""
    from mmengine.config import Config
    from mmdet.registry import MODELS

    cfg = Config.fromfile(os.path.join(ROOT, "dla/configs/mmdet/faster_rcnn/faster_rcnn_r50dlal_fpn_1x_coco.py"))
    init_default_scope("mmdet")
    fp, out = _fingerprint(MODELS.build(cfg.model.backbone), "dla/det_resnet_dlal_r50_slim.pt")
    for i, o in enumerate(out):
        assert rel_err(o[:, ::fp["channel_step"][f"out{i}"]], fp["output"][f"out{i}"]) <= 1e-10


def test_dwnet_mmseg_plugin_reproduces_the_official_fingerprint():
    """DWNet-T through mmseg's registry (the UperNet config's backbone, with the detection drop-path rate)."""
    from mmengine.config import Config
    from mmseg.registry import MODELS

    cfg = Config.fromfile(os.path.join(ROOT, "dwnet/configs/mmseg/upernet_dwnet_tiny_patch4_window7_512x512_160k_ade20k.py"))
    init_default_scope("mmseg")
    fp, out = _fingerprint(MODELS.build(dict(cfg.model.backbone, drop_path_rate=0.2)), "dwnet/det_backbone_dwnet_tiny.pt")
    for key, step in fp["channel_step"].items():
        assert rel_err(out[int(key[-1])][:, ::step], fp["output"][key]) <= 1e-10, key


def _small_faster_rcnn(backbone):
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(ROOT, "dla/configs/mmdet/faster_rcnn/faster_rcnn_r50dlal_fpn_1x_coco.py"))
    cfg.model.backbone = backbone
    return cfg


def test_pretrained_init_cfg_loads_through_the_detector(tmp_path, caplog):
    """init_cfg=dict(type='Pretrained', checkpoint=...) in the config: the detector's init_weights() loads the
    backbone checkpoint (a DataParallel training checkpoint: 'state_dict', 'module.' prefix) exactly, and the
    backbone's load report says every key loaded."""
    from mmdet.registry import MODELS

    src = dla.create_backbone("ResNet_dlal", layers=[1, 1, 1, 1])
    det_init_(src)
    path = tmp_path / "r50_dla_small.pth"
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    cfg = _small_faster_rcnn(dict(type="ResNet_dlal", layers=[1, 1, 1, 1], frozen_stages=1, norm_eval=True,
                                  style="pytorch", init_cfg=dict(type="Pretrained", checkpoint=str(path))))
    init_default_scope("mmdet")
    model = MODELS.build(cfg.model)
    with caplog.at_level(logging.INFO, logger="common.backbone"):
        model.init_weights()
    bb = model.backbone
    assert bb.is_init and bb.load_report is not None and bb.load_report.complete
    assert not bb.load_report.unexpected
    for k, v in src.state_dict().items():
        assert torch.equal(bb.state_dict()[k], v), k
    # frozen_stages=1 and norm_eval through the detector's train()
    model.train()
    assert not bb.conv1.weight.requires_grad and not any(p.requires_grad for p in bb.layer1.parameters())
    assert all(p.requires_grad for p in bb.layer2.parameters())
    assert not any(m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_pretrained_classification_checkpoint_is_reported(tmp_path, caplog):
    """A classification checkpoint (RLA-Net's, with bn2 / fc) loads into the detection backbone with every
    unused key named in the logged report, through init_cfg; the ``pretrained=`` shortcut works too."""
    from mmdet.registry import MODELS

    cls_model = rlanet.create_model("rla_resnet50")
    sd = {k: v for k, v in cls_model.state_dict().items()}
    path = tmp_path / "resnet50_rla.pth.tar"
    torch.save({"state_dict": sd}, path)
    init_default_scope("mmdet")
    bb = MODELS.build(dict(type="RLA_ResNet", layers=[3, 4, 6, 3], pretrained=str(path)))
    assert bb.init_cfg == dict(type="Pretrained", checkpoint=str(path))
    with caplog.at_level(logging.INFO, logger="common.backbone"):
        bb.init_weights()
    report = bb.load_report
    assert report.complete and set(report.unexpected) == {k for k in sd if k.startswith(("fc.", "bn2."))}
    assert "bn2.weight" in caplog.text and "fc.weight" in caplog.text
    assert torch.equal(bb.state_dict()["stages.3.2.conv3.weight"], sd["stages.3.2.conv3.weight"])


COPY_IN = [("dla/mmdet_copy/resnet_dlal.py", "mmdet", "ResNet_dlal"),
           ("rlanet/mmdet_copy/resnet_rla.py", "mmdet", "RLA_ResNet"),
           ("dwnet/mmdet_copy/dwnet.py", "mmdet", "DWNet"),
           ("dwnet/mmseg_copy/dwnet.py", "mmseg", "DWNet")]


@pytest.mark.parametrize("path,lib,name", COPY_IN, ids=[p[0] for p in COPY_IN])
def test_copy_in_file(tmp_path, monkeypatch, path, lib, name):
    """The official way: the file copied into <checkout>/<lib>/models/backbones/ and imported from its
    __init__.py gives the registered backbone (a stand-in package plays the checkout's backbones package)."""
    pkg = tmp_path / f"fake_{lib}_checkout" / "backbones"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    shutil.copy(os.path.join(ROOT, path), pkg / os.path.basename(path))
    module = os.path.basename(path)[:-3]
    (pkg / "__init__.py").write_text(f"from .{module} import {name}\n__all__ = ['{name}']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module(f"fake_{lib}_checkout.backbones")
    try:
        registry = importlib.import_module(f"{lib}.registry").MODELS
        assert getattr(mod, name) is registry.get(name)
        assert f"{lib}/models/backbones/{os.path.basename(path)}" in (pkg / os.path.basename(path)).read_text()
    finally:
        for k in [k for k in sys.modules if k.startswith(f"fake_{lib}_checkout")]:
            del sys.modules[k]
