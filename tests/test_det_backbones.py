"""The detection backbones (``dla.create_backbone('ResNet_dlal')``, ``rlanet.create_backbone('RLA_ResNet')``,
``dwnet.create_backbone('DWNet')``): the official detection backbones' fingerprints (keys, shapes, order,
parameter counts, float64 maps), mmdet's frozen_stages / norm_eval behaviour, the report of loading a
classification checkpoint, and the converters of ``<paper>/tools/convert_to_det.py``."""
import logging
import os

import pytest
import torch
import torch.nn as nn

import dla
import dwnet
import rlanet
from common.backbone import LoadReport
from common.fingerprint import det_init_, det_input, manifest, rel_err
from common.registry import UnknownModelError

DATA = os.path.join(os.path.dirname(__file__), "data")


def _fp(path):
    return torch.load(os.path.join(DATA, path), weights_only=True)


def _check(model, fp):
    assert sum(p.numel() for p in model.parameters()) == fp["num_params"]
    model.eval()
    det_init_(model)
    model.double()
    assert manifest(model) == [(k, tuple(s), d) for k, s, d in fp["manifest"]]
    with torch.no_grad():
        return model(det_input(fp["input_shape"], fp["seed"]))


# ------------------------------------------------------------------------------------------
# Fingerprints of the official detection backbones, through create_backbone
# ------------------------------------------------------------------------------------------
def test_dla_resnet_dlal_r50_fingerprint():
    """ResNet_dlal of faster_rcnn_r50dlal_fpn_1x_coco (DSU C // 20, ``excite``): 498 keys, 25,963,368
    parameters, the four maps at 64 x 96 (every 8th channel stored)."""
    fp = _fp("dla/det_resnet_dlal_r50_slim.pt")
    out = _check(dla.create_backbone("ResNet_dlal", layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True,
                                     style="pytorch", init_cfg=dict(type="Pretrained", checkpoint="r50_dla.pth.tar")),
                 fp)
    assert isinstance(out, tuple) and [o.shape[1] for o in out] == [256, 512, 1024, 2048]
    for i, o in enumerate(out):
        step = fp["channel_step"][f"out{i}"]
        assert rel_err(o[:, ::step], fp["output"][f"out{i}"]) <= 1e-10


def test_rlanet_rla_resnet50_fingerprint():
    """RLA_ResNet of faster_rcnn_r50rla_fpn (406 keys, no bn2 / fc), maps at 128 x 128 (every 64th channel)."""
    fp = _fp("rlanet/mmdet_rla_resnet50_backbone_slim.pt")
    out = _check(rlanet.create_backbone("RLA_ResNet", layers=[3, 4, 6, 3], frozen_stages=1, norm_eval=True,
                                        style="pytorch"), fp)
    assert isinstance(out, tuple) and len(out) == 4
    for i, o in enumerate(out):
        assert rel_err(o[:, ::64], fp["output"][f"stage{i + 1}"]) <= 1e-10


@pytest.mark.parametrize("name,dynamic", [("det_backbone_dwnet_tiny", False), ("det_backbone_dynamic_dwnet_tiny", True)])
def test_dwnet_tiny_fingerprint(name, dynamic):
    """DWNet / D-DWNet tiny of the Cascade Mask R-CNN configs at 100 x 136 (patch, window and merge padding),
    with the per-output norm0-3."""
    fp = _fp(f"dwnet/{name}.pt")
    out = _check(dwnet.create_backbone("DWNet", embed_dim=96, depths=[2, 2, 6, 2], window_size=7, mlp_ratio=4.0,
                                       drop_rate=0.0, drop_path_rate=0.2, ape=False, patch_norm=True,
                                       out_indices=(0, 1, 2, 3), use_checkpoint=False, dynamic=dynamic), fp)
    assert isinstance(out, tuple) and len(out) == 4
    for key, step in fp["channel_step"].items():
        assert rel_err(out[int(key[-1])][:, ::step], fp["output"][key]) <= 1e-10, key


def test_other_official_configurations_build():
    """R101-DLA (layers 3-4-23-3), ECA-RLA (k 5-5-5-7: 86 ECA weights more), DWNet base (128, 2-2-18-2)."""
    r101 = dla.create_backbone("ResNet_dlal", layers=[3, 4, 23, 3])
    assert len(r101.layer3.layers) == 23 and r101.out_channels == [256, 512, 1024, 2048]
    eca = rlanet.create_backbone("RLA_ResNet", layers=[3, 4, 6, 3], ECA=[5, 5, 5, 7])
    assert sum(p.numel() for p in eca.parameters()) == 23_789_632 + 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7  # one Conv1d_k per block
    base = dwnet.create_backbone("DWNet", embed_dim=128, depths=[2, 2, 18, 2], drop_path_rate=0.3, out_indices=(1, 3))
    assert base.out_channels == [256, 1024]
    assert [k for k in base.state_dict() if k.startswith("norm")][0].startswith("norm1.")


def test_unknown_backbone_names():
    for pkg, good in ((dla, "ResNet_dlal"), (rlanet, "RLA_ResNet"), (dwnet, "DWNet")):
        with pytest.raises(UnknownModelError, match=f"unknown {pkg.__name__} detection backbone 'resnet50'; "
                                                    f"choose one of: {good}"):
            pkg.create_backbone("resnet50")


# ------------------------------------------------------------------------------------------
# mmdet's frozen_stages / norm_eval / init_cfg
# ------------------------------------------------------------------------------------------
def _small(paper, **kw):
    if paper == "dla":
        return dla.create_backbone("ResNet_dlal", layers=[1, 1, 1, 1], **kw)
    if paper == "rlanet":
        return rlanet.create_backbone("RLA_ResNet", layers=[1, 1, 1, 1], **kw)
    return dwnet.create_backbone("DWNet", embed_dim=32, depths=[1, 1, 1, 1], **kw)


@pytest.mark.parametrize("paper,stem,stage1,stage2", [
    ("dla", "conv1.", "layer1.", "layer2."),
    ("rlanet", "conv1.", ("stages.0.", "stage_bns.0.", "conv_outs.0.", "recurrent_convs.0."), "stages.1."),
    ("dwnet", "patch_embed.", "layers.0.", "layers.1."),
])
def test_frozen_stages_and_norm_eval(paper, stem, stage1, stage2):
    """frozen_stages=1 (ResNets) / 2 (DWNet: Swin's count) freezes the stem and the first stage, and keeps
    them in eval mode through train(); with norm_eval every BatchNorm stays in eval mode."""
    frozen = 2 if paper == "dwnet" else 1
    m = _small(paper, frozen_stages=frozen, norm_eval=True)
    m.train()
    names = {n: p.requires_grad for n, p in m.named_parameters()}
    assert not any(v for n, v in names.items() if n.startswith(stem))
    assert not any(v for n, v in names.items() if n.startswith(stage1))
    assert all(v for n, v in names.items() if n.startswith(stage2))
    assert all(not b.training for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    frozen_mods = [mod for n, mod in m.named_modules() if n and (n + ".").startswith(stage1 if isinstance(stage1, str)
                                                                                      else stage1[0])]
    assert frozen_mods and not any(mod.training for mod in frozen_mods)
    # without norm_eval the BatchNorms outside the frozen stages train
    m = _small(paper, frozen_stages=frozen, norm_eval=False).train()
    trains = {n: b.training for n, b in m.named_modules() if isinstance(b, nn.BatchNorm2d)}
    assert any(v for n, v in trains.items() if n.startswith(stage2))
    assert not any(v for n, v in trains.items() if n.startswith(stage1 if isinstance(stage1, str) else stage1[0]))
    assert m.train(False) is m and not m.training


def test_init_weights_official_and_pretrained(tmp_path):
    """init_weights(): the official init (bn3 zero, convs Kaiming) without a checkpoint; with pretrained= /
    init_cfg=Pretrained the checkpoint's tensors (the DataParallel prefix dropped); both at once is an error."""
    m = _small("dla")
    m.init_weights()
    assert torch.count_nonzero(m.layer1.layers[0].bn3.weight) == 0
    assert m.init_weights() is None and m.load_report is None
    src = _small("rlanet")
    det_init_(src)
    path = tmp_path / "rla.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    for dst in (_small("rlanet", pretrained=str(path)),
                _small("rlanet", init_cfg=dict(type="Pretrained", checkpoint=str(path)))):
        report = dst.init_weights()
        assert isinstance(report, LoadReport) and report.complete and not report.unexpected
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(ValueError, match="init_cfg and pretrained cannot be specified at the same time"):
        _small("dwnet", pretrained="a.pth", init_cfg=dict(type="Pretrained", checkpoint="b.pth"))


def test_dwnet_backbone_any_input_size_and_ape():
    """Any input size (odd patch grids); ``ape`` is a (1, C, H, W) map bicubic-resized to the patch grid, and a
    classification (1, H*W, C) embedding is reshaped into it on load."""
    m = _small("dwnet", ape=True, pretrain_img_size=64).eval()
    assert m.absolute_pos_embed.shape == (1, 32, 16, 16)
    with torch.no_grad():
        out = m(torch.randn(1, 3, 45, 70))
    assert [tuple(o.shape[-2:]) for o in out] == [(12, 18), (6, 9), (3, 5), (2, 3)]
    cls = dwnet.create_model("dwnet", img_size=64, embed_dim=32, depths=(1, 1, 1, 1), ape=True)
    report = m.load_pretrained(cls.state_dict())
    assert "absolute_pos_embed" in report.loaded
    assert torch.equal(m.absolute_pos_embed, cls.absolute_pos_embed.reshape(1, 16, 16, 32).permute(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------
# Classification checkpoints: the report of what cannot load, and the converters
# ------------------------------------------------------------------------------------------
def _dla_cls():
    return dla.ResNetDLAL([1, 1, 1, 1])


def test_dla_classification_checkpoint_report(caplog):
    """An ImageNet DLA-L checkpoint in ResNet_dlal: the 24 DSU tensors have other shapes (C // 16 vs C // 20),
    ``extict`` is ``excite`` under another name (4 + 4 keys), ``fc`` has no place; nothing else is left out."""
    src = _dla_cls()
    dst = _small("dla")
    with caplog.at_level(logging.WARNING, logger="common.backbone"):
        report = dst.load_pretrained(src.state_dict())
    lstm = [k for k in dst.state_dict() if ".lstm." in k and not k.endswith("num_batches_tracked")]
    assert sorted(report.mismatched) == sorted(k for k in lstm if k.endswith((".seq.0.weight", ".seq.0.bias",
                                                                               ".seq.2.weight")))
    assert len(report.mismatched) == 24
    assert all("C // 16" in r and "C // 20" in r for _, _, r in report.mismatched.values())
    assert report.mismatched["layer1.lstm.w_ih.0.seq.0.weight"][:2] == ((16, 256), (12, 256))
    assert sorted(report.missing) == [f"layer{i}.excite.weight" for i in range(1, 5)]
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"] + [f"layer{i}.extict.weight" for i in range(1, 5)]
    assert "renames it" in report.unexpected["layer1.extict.weight"]
    text = caplog.text
    assert "layer1.lstm.w_ih.0.seq.0.weight: checkpoint (16, 256) vs backbone (12, 256)" in text
    assert "fc.weight" in text and "layer4.extict.weight" in text
    # what did load is the checkpoint's
    assert torch.equal(dst.layer3.layers[0].conv2.weight, src.layer3.layers[0].conv2.weight)
    # the converted state dict: extict renamed, the DSU and fc left out
    sd, conv = dst.converted_state_dict(src.state_dict())
    assert conv.renamed == {f"layer{i}.extict.weight": f"layer{i}.excite.weight" for i in range(1, 5)}
    assert torch.equal(sd["layer2.excite.weight"], src.layer2.extict.weight)
    assert not conv.missing and len(conv.mismatched) == 24 and sorted(conv.unexpected) == ["fc.bias", "fc.weight"]


def test_dwnet_and_rlanet_classification_checkpoint_reports():
    """DWNet: ``norm.*`` / ``head.*`` unused, ``norm0-3`` missing (BatchNorm defaults); RLA-Net: every backbone
    key loads, ``bn2`` / ``fc`` unused."""
    cls = dwnet.create_model("dynamic_dwnet_tiny", embed_dim=32, depths=(1, 1, 1, 1))
    dst = _small("dwnet", dynamic=True)
    report = dst.load_pretrained(cls.state_dict(), log=False)
    assert sorted({k.split(".")[0] for k in report.missing}) == ["norm0", "norm1", "norm2", "norm3"]
    assert len(report.missing) == 20 and not report.mismatched
    assert sorted(report.unexpected) == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    assert "BatchNorm's defaults" in report.missing["norm2.running_var"]
    assert "final LayerNorm" in report.unexpected["norm.weight"]
    rla = rlanet.create_model("RLA_ResNet", layers=(1, 1, 1, 1))
    report = _small("rlanet").load_pretrained(rla.state_dict(), log=False)
    assert report.complete and sorted(report.unexpected) == [f"{m}.{p}" for m in ("bn2",) for p in (
        "bias", "num_batches_tracked", "running_mean", "running_var", "weight")] + ["fc.bias", "fc.weight"]
    assert "recurrent state h" in report.unexpected["bn2.weight"]
    assert "bn2.running_var" in str(report) and "recurrent state h" in str(report)


def test_converters(tmp_path, capsys):
    """``python -m <paper>.tools.convert_to_det SRC DST --arch ...`` writes a checkpoint that mmengine's
    Pretrained init (and init_weights) reads, prints the report; a bad input exits 2 with one message."""
    from dla.tools import convert_to_det as dla_conv
    from dwnet.tools import convert_to_det as dwnet_conv
    from rlanet.tools import convert_to_det as rla_conv

    assert {"r50", "r101"} <= set(dla_conv.ARCHS) and {"r50", "r50_eca"} <= set(rla_conv.ARCHS)
    assert {"tiny", "base", "dynamic_tiny", "dynamic_base"} <= set(dwnet_conv.ARCHS)
    src = dla.ResNetDLAL([3, 4, 6, 3])
    path = tmp_path / "r50_dla.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    out = tmp_path / "r50_dla_det.pth"
    assert dla_conv.main([str(path), str(out), "--arch", "r50"]) == 0
    printed = capsys.readouterr().out
    assert "renamed (4)" in printed and "layer4.extict.weight -> layer4.excite.weight" in printed
    assert "shape mismatch, not loaded (24)" in printed and "C // 20" in printed and f"wrote {out}" in printed
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["meta"]["report"]["renamed"]["layer1.extict.weight"] == "layer1.excite.weight"
    dst = dla.create_backbone("ResNet_dlal", layers=[3, 4, 6, 3], pretrained=str(out))
    report = dst.init_weights()
    assert not report.unexpected and not report.mismatched and sorted({k.split(".")[1] for k in report.missing}) == ["lstm"]
    assert torch.equal(dst.layer1.excite.weight, src.layer1.extict.weight)
    # bad inputs: status 2, one message, nothing written
    assert dla_conv.main([str(tmp_path / "nope.pth"), str(tmp_path / "x.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err and not (tmp_path / "x.pth").exists()
    rla = tmp_path / "rla.pth"
    torch.save(rlanet.create_model("RLA_ResNet", layers=(1, 1, 1, 1)).state_dict(), rla)
    assert dwnet_conv.main([str(rla), str(tmp_path / "y.pth"), "--arch", "tiny"]) == 2
    assert "none of its keys fits DWNet" in capsys.readouterr().err and not (tmp_path / "y.pth").exists()
