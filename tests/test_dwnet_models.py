"""DWNet against the official code: every classification fingerprint (keys, shapes, order, parameter count,
float64 output), the dynamic depth-wise convolutions against float64 loops, the official flops(), and inputs
of other sizes."""
import ast
import inspect
import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

import dwnet
from common.fingerprint import det_init_, det_input, manifest, rel_err
from dwnet.models.ops import dynamic_dwconv, idynamic_dwconv

DATA = os.path.join(os.path.dirname(__file__), "data", "dwnet")
f64 = torch.float64

# The official DWNet(...) calls (each fingerprint's ``ctor``; common: img_size=224, patch_size=4, in_chans=3,
# num_classes=1000, window_size=7, mlp_ratio=4.0, drop_rate=0.0, ape=False, patch_norm=True, use_checkpoint=False)
_COMMON = dict(img_size=224, patch_size=4, in_chans=3, num_classes=1000, window_size=7, mlp_ratio=4.0,
               drop_rate=0.0, ape=False, patch_norm=True, use_checkpoint=False)
_T = dict(_COMMON, embed_dim=96, depths=[2, 2, 6, 2], drop_path_rate=0.2)
_B = dict(_COMMON, embed_dim=128, depths=[2, 2, 18, 2], drop_path_rate=0.5)
OFFICIAL = {
    "dwnet_tiny": dict(_T, dynamic=False),
    "dynamic_dwnet_tiny": dict(_T, dynamic=True),
    "i_dynamic_dwnet_tiny": dict(_T, dynamic=True, inhomogeneous=True, inhomo_heads=[3, 6, 12, 24]),
    "dwnet_base": dict(_B, dynamic=False),
    "dynamic_dwnet_base": dict(_B, dynamic=True),
    "i_dynamic_dwnet_base": dict(_B, dynamic=True, inhomogeneous=True, inhomo_heads=[4, 8, 16, 32]),
}
BASE = [n for n in OFFICIAL if n.endswith("_base")]
TINY = [n for n in OFFICIAL if n.endswith("_tiny")]
# the official flops() at 224 (GMACs to 4 digits)
OFFICIAL_GFLOPS = {"dwnet_tiny": 3.742, "dynamic_dwnet_tiny": 3.771, "i_dynamic_dwnet_tiny": 4.389,
                   "dwnet_base": 12.845, "dynamic_dwnet_base": 12.935, "i_dynamic_dwnet_base": 14.372}


def _fp(name):
    return torch.load(os.path.join(DATA, f"{name}.pt"), weights_only=True)


def _ctor_kwargs(ctor):
    """The keyword arguments of the ``DWNet(...)`` call a fingerprint's ``ctor`` records."""
    call = ast.parse(ctor[ctor.index("DWNet("):], mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def _check_fingerprint(name):
    fp = _fp(name)
    assert _ctor_kwargs(fp["ctor"]) == OFFICIAL[name]
    model = dwnet.create_model("dwnet", **OFFICIAL[name]).eval()  # built in float32
    assert manifest(model) == [(k, tuple(s), "torch.float32" if d == "torch.float64" else d)
                               for k, s, d in fp["manifest"]]
    assert sum(p.numel() for p in model.parameters()) == fp["num_params"]
    det_init_(model)
    with torch.no_grad():
        for suffix, factor in fp.get("post_init", {}).items():  # the fingerprint recipe of the base dynamic models
            for k, t in model.state_dict().items():
                if k.endswith(suffix):
                    t.mul_(factor)
    model.double()
    with torch.no_grad():
        out = model(det_input(fp["input_shape"], fp["seed"]))
    assert out.dtype == f64 and torch.isfinite(out).all()
    assert rel_err(out, fp["output"]) <= 1e-10


@pytest.mark.parametrize("name", TINY)
def test_fingerprint_tiny(name):
    _check_fingerprint(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", BASE)
def test_fingerprint_base(name):
    _check_fingerprint(name)


def test_variants_are_the_official_configs():
    """Each named variant is the official DWNet(...) call (defaults filled in, tuples as lists)."""
    assert [v.name for v in dwnet.variants()] == list(OFFICIAL)
    sig = inspect.signature(dwnet.models.dwnet.dwnet)

    def full(kw):
        bound = sig.bind(**kw)
        bound.apply_defaults()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in bound.arguments.items()}

    for name, kw in OFFICIAL.items():
        assert full(dwnet.get_variant(name).build_kwargs()) == full(kw), name


@pytest.mark.parametrize("name", TINY)
def test_official_flops(name):
    model = dwnet.create_model(name)
    assert round(model.flops() / 1e9, 3) == OFFICIAL_GFLOPS[name]


@pytest.mark.parametrize("name,gmacs", [("dwnet_tiny", 3.743), ("dynamic_dwnet_tiny", 3.771)])
def test_fvcore_macs(name, gmacs):
    """common.flops (fvcore) at 224 gives the official model's count."""
    from common.flops import count_flops

    assert round(count_flops(dwnet.create_model(name), torch.randn(1, 3, 224, 224)) / 1e9, 3) == gmacs


# ------------------------------------------------------------------------------------------
# The dynamic depth-wise convolutions against float64 loops
# ------------------------------------------------------------------------------------------
def _loop_idynamic(x, weight):
    """out[b, c, y, x] = sum_ij weight[b, c // (C/G), i, j, y, x] * x_pad[b, c, y + i - p, x + j - p]."""
    b, c, h, w = x.shape
    g, k = weight.shape[1], weight.shape[2]
    p = (k - 1) // 2
    out = torch.zeros(b, c, h, w, dtype=f64)
    for bb, cc, yy, xx in itertools.product(range(b), range(c), range(h), range(w)):
        s = 0.0
        for i, j in itertools.product(range(k), range(k)):
            y, xq = yy + i - p, xx + j - p
            if 0 <= y < h and 0 <= xq < w:
                s += float(weight[bb, cc // (c // g), i, j, yy, xx]) * float(x[bb, cc, y, xq])
        out[bb, cc, yy, xx] = s
    return out


def _loop_dynamic(x, weight, bias, p):
    b, c, h, w = x.shape
    k = weight.shape[-1]
    out = torch.zeros(b, c, h, w, dtype=f64)
    for bb, cc, yy, xx in itertools.product(range(b), range(c), range(h), range(w)):
        s = float(bias[cc])
        for i, j in itertools.product(range(k), range(k)):
            y, xq = yy + i - p, xx + j - p
            if 0 <= y < h and 0 <= xq < w:
                s += float(weight[bb, cc, i, j]) * float(x[bb, cc, y, xq])
        out[bb, cc, yy, xx] = s
    return out


def test_idynamic_dwconv_matches_float64_loop():
    gen = torch.Generator().manual_seed(0)
    for (b, c, h, w, g, k) in ((2, 6, 5, 7, 3, 3), (1, 4, 8, 6, 2, 7)):
        x = torch.randn(b, c, h, w, generator=gen, dtype=f64)
        weight = torch.randn(b, g, k, k, h, w, generator=gen, dtype=f64)
        torch.testing.assert_close(idynamic_dwconv(x, weight), _loop_idynamic(x, weight), rtol=1e-13, atol=1e-13)
        # equals the unfold formulation (the fingerprints' CPU replacement of the CUDA kernel)
        unf = F.unfold(x, k, padding=(k - 1) // 2).view(b, g, c // g, k * k, h, w)
        ref = (unf * weight.view(b, g, 1, k * k, h, w)).sum(3).view(b, c, h, w)
        torch.testing.assert_close(idynamic_dwconv(x, weight), ref, rtol=1e-13, atol=1e-13)


def test_idynamic_dwconv_backward():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 5, 6, generator=gen, dtype=f64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, 5, 6, generator=gen, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(idynamic_dwconv, (x, weight))
    # a non-contiguous incoming gradient (the official CUDA backward gets this one wrong)
    g = torch.randn(2, 6, 5, 4, generator=gen, dtype=f64).permute(0, 3, 2, 1)
    assert not g.is_contiguous()
    ga = torch.autograd.grad(idynamic_dwconv(x, weight), (x, weight), g)
    unf = F.unfold(x, 3, padding=1).view(2, 2, 2, 9, 5, 6)
    ref = (unf * weight.view(2, 2, 1, 9, 5, 6)).sum(3).view(2, 4, 5, 6)
    gb = torch.autograd.grad(ref, (x, weight), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_idynamic_dwconv_low_precision(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 8, 9, 9, generator=gen, dtype=f64)
    weight = torch.randn(1, 2, 7, 7, 9, 9, generator=gen, dtype=f64) / 7
    out = idynamic_dwconv(x.to(dtype), weight.to(dtype))
    assert out.dtype == dtype
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    assert rel_err(out, idynamic_dwconv(x.to(dtype).double(), weight.to(dtype).double())) < tol


def test_dynamic_dwconv_matches_float64_loop():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=f64)
    weight = torch.randn(2, 3, 7, 7, generator=gen, dtype=f64)
    bias = torch.randn(3, generator=gen, dtype=f64)
    torch.testing.assert_close(dynamic_dwconv(x, weight, bias, padding=3), _loop_dynamic(x, weight, bias, 3),
                               rtol=1e-13, atol=1e-13)


def test_dynamic_dwconv_module_kernel_layout():
    """DynamicDWConv: conv2's output channel c*49 + 7*i + j is tap (i, j) of channel c; bias is static."""
    torch.manual_seed(0)
    m = dwnet.models.DynamicDWConv(8, kernel_size=7, padding=3, groups=8).double().eval()
    with torch.no_grad():
        m.bias.normal_()
        for bn in (m.bn,):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 1.5)
    assert [k for k in m.state_dict()][:3] == ["bias", "conv1.weight", "bn.weight"]
    x = torch.randn(2, 8, 6, 6, dtype=f64)
    g = x.mean(dim=(2, 3), keepdim=True)
    k = m.conv2(F.relu(m.bn(m.conv1(g)))).view(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _loop_dynamic(x, k, m.bias, 3), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Inputs of other sizes, features, checkpointing
# ------------------------------------------------------------------------------------------
def _small(name="dynamic_dwnet_tiny", **kw):
    torch.manual_seed(0)
    return dwnet.create_model(name, depths=(1, 1, 1, 1), **kw).eval()


@pytest.mark.parametrize("name", TINY)
def test_other_input_sizes(name):
    model = _small(name)
    with torch.no_grad():
        for h, w in ((256, 192), (100, 136), (32, 32)):
            x = torch.randn(1, 3, h, w)
            feats = model.forward_features(x)
            hh, ww = -(-h // 4), -(-w // 4)
            for _ in range(3):
                hh, ww = (hh + 1) // 2, (ww + 1) // 2
            assert feats.shape == (1, 768, hh, ww)
            assert model(x).shape == (1, 1000) and torch.isfinite(model(x)).all()


def test_block_pads_to_the_window_like_the_official_backbone():
    """At a size that is not a multiple of 7, the DWBlock sees the map zero-padded at the bottom / right (the
    official detection backbone's rule); the padding matters (conv0 -> BN -> ReLU maps zeros to non-zeros)."""
    torch.manual_seed(0)
    blk = dwnet.models.SpatialBlock(8, window_size=7, dynamic=True).double().eval()
    det_init_(blk)
    x = torch.randn(2, 8, 9, 11, dtype=f64)
    with torch.no_grad():
        z = blk.attn2conv(F.pad(x, (0, 3, 0, 5)))[:, :, :9, :11]
        x1 = x + z
        ref = x1 + blk.mlp(blk.bn(x1).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(blk(x), ref, rtol=0, atol=0)
        assert not torch.allclose(blk.attn2conv(x), z)


def test_patch_merging_on_maps_is_the_token_form():
    from common.layers.swin import PatchMerging

    torch.manual_seed(0)
    m = PatchMerging(5).double()
    for h, w in ((6, 8), (7, 9)):
        x = torch.randn(2, 5, h, w, dtype=f64)
        tokens = m(x.flatten(2).transpose(1, 2), h, w)
        ref = tokens.transpose(1, 2).reshape(2, 10, (h + 1) // 2, (w + 1) // 2)
        torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-15)


def test_features_only_stage_maps():
    model = _small()
    x = torch.randn(2, 3, 64, 96)
    feats = dwnet.create_model("dynamic_dwnet_tiny", depths=(1, 1, 1, 1), features_only=True)
    feats.load_state_dict(model.state_dict(), strict=False)
    assert feats.feature_info.channels() == [96, 192, 384, 768]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        maps = feats.eval()(x)
        y = model.pos_drop(model.patch_embed(x))
        ref = []
        for layer in model.layers:
            for blk in layer.blocks:
                y = blk(y)
            ref.append(y)
            if layer.downsample is not None:
                y = layer.downsample(y)
        ref[-1] = model.norm(ref[-1])
    assert [tuple(m.shape) for m in maps] == [(2, 96, 16, 24), (2, 192, 8, 12), (2, 384, 4, 6), (2, 768, 2, 3)]
    for a, b in zip(maps, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grad_checkpointing_is_per_block():
    torch.manual_seed(0)
    ref = dwnet.create_model("i_dynamic_dwnet_tiny", depths=(1, 1, 2, 1), num_classes=5).double().train()
    ck = dwnet.create_model("i_dynamic_dwnet_tiny", depths=(1, 1, 2, 1), num_classes=5, use_checkpoint=True)
    ck.double().train().load_state_dict(ref.state_dict())
    assert ck.grad_checkpointing and all(layer.use_checkpoint for layer in ck.layers)
    x = torch.randn(2, 3, 32, 32, dtype=f64)
    outs = []
    for m in (ref, ck):
        torch.manual_seed(1)
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)
    for (k, a), b in zip(ref.named_parameters(), ck.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=k)
    ck.set_grad_checkpointing(False)
    assert not any(layer.use_checkpoint for layer in ck.layers)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="inhomo_heads"):
        dwnet.create_model("dwnet", dynamic=True, inhomogeneous=True)
    with pytest.raises(ValueError, match="not divisible into groups of 5"):
        dwnet.create_model("dwnet", dynamic=True, inhomogeneous=True, inhomo_heads=[5, 6, 12, 24])
    with pytest.raises(ValueError, match="needs dynamic=True"):
        dwnet.create_model("dwnet", inhomogeneous=True, inhomo_heads=[3, 6, 12, 24])
    ape = dwnet.create_model("dwnet_tiny", depths=(1, 1, 1, 1), ape=True).eval()
    assert list(ape.state_dict())[0] == "absolute_pos_embed"
    with pytest.raises(ValueError, match="built for 224x224"):
        ape(torch.zeros(1, 3, 64, 64))
    assert math.isfinite(ape(torch.randn(1, 3, 224, 224)).sum().item())


# ------------------------------------------------------------------------------------------
# The official configs and build_model
# ------------------------------------------------------------------------------------------
def test_configs_build_the_fingerprinted_models():
    """Each shipped yaml, through the official defaults and build_model, is the DWNet(...) call of the
    fingerprint made from that yaml; create_model builds it by the file name."""
    from dwnet.config import config_names, load_config
    from dwnet.models import model_kwargs

    seen = []
    for name in OFFICIAL:
        ctor = _fp(name)["ctor"]
        yaml_name = ctor[ctor.index("configs/") + len("configs/"):ctor.index(".yaml")]
        assert model_kwargs(load_config(yaml_name)) == OFFICIAL[name], yaml_name
        seen.append(yaml_name)
    assert sorted(seen) == config_names()
    torch.manual_seed(0)
    a = dwnet.create_model("i_dynamic_dwnet_tiny_patch4_window7_224", depths=[1, 1, 1, 1])
    torch.manual_seed(0)
    b = dwnet.create_model("i_dynamic_dwnet_tiny", depths=[1, 1, 1, 1])
    assert manifest(a) == manifest(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_config_errors_are_named(tmp_path):
    from common.config import ConfigError
    from common.registry import UnknownModelError
    from dwnet.config import load_config
    from dwnet.models import build_model

    with pytest.raises(ConfigError, match="unknown DWNet config 'nope'; shipped configs: dwnet_base"):
        load_config("nope")
    with pytest.raises(ConfigError, match="unknown config key 'MODEL.DWNET.DEPTH'"):
        load_config("dwnet_tiny_patch4_window7_224", opts=["MODEL.DWNET.DEPTH", "[1, 1, 1, 1]"])
    with pytest.raises(ConfigError, match="MODEL.TYPE 'swin' is not a DWNet model type"):
        build_model(load_config())
    with pytest.raises(UnknownModelError, match="configs: dwnet_base_patch4_window7_224"):
        dwnet.create_model("swin_tiny")
    child = tmp_path / "child.yaml"
    child.write_text(f"BASE: ['{dwnet.config.CONFIG_DIR}/dynamic_dwnet_tiny_patch4_window7_224.yaml']\n"
                     "MODEL:\n  DROP_PATH_RATE: 0.1\n")
    cfg = load_config(str(child))
    assert cfg.MODEL.TYPE == "ddwnet" and cfg.MODEL.DWNET.DYNAMIC and cfg.MODEL.DROP_PATH_RATE == 0.1


# ------------------------------------------------------------------------------------------
# An odd input size against the official detection backbone (same blocks, same padding rule)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,variant", [("det_backbone_dwnet_tiny", "dwnet_tiny"),
                                          ("det_backbone_dynamic_dwnet_tiny", "dynamic_dwnet_tiny")])
def test_odd_input_size_matches_the_official_backbone(name, variant):
    """At 100x136 (patch padding, block padding to multiples of 7, odd PatchMerging) the stage maps of the
    classification trunk are the official mmdet backbone's before its per-stage ``norm{i}`` BatchNorm (eval:
    applied here with the same deterministic values). The stored outputs keep every ``channel_step``-th
    channel."""
    fp = _fp(name)
    model = dwnet.create_model(variant).eval()
    det_init_(model)
    model.double()
    backbone = [k for k, _, _ in fp["manifest"] if not k.startswith(("norm0.", "norm1.", "norm2.", "norm3."))]
    assert backbone == [k for k in model.state_dict() if not k.startswith(("norm.", "head."))]
    x = det_input(fp["input_shape"], fp["seed"])
    from common.fingerprint import det_value

    with torch.no_grad():
        maps = dwnet.create_model(variant, features_only=True)
        maps.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
        maps = maps.double().eval()
        y = maps(x)
        y[-1] = model.layers[-1](model.layers[:-1](model.pos_drop(model.patch_embed(x))))  # before the final norm
    for key, step in fp["channel_step"].items():
        i = int(key[-1])
        bn = {s: det_value(f"norm{i}.{s}", (y[i].shape[1],), torch.float32).double()
              for s in ("weight", "bias", "running_mean", "running_var")}
        out = F.batch_norm(y[i], bn["running_mean"], bn["running_var"], bn["weight"], bn["bias"], False, 0.0, 1e-5)
        assert rel_err(out[:, ::step], fp["output"][key]) <= 1e-10, key


# ------------------------------------------------------------------------------------------
# Checkpoints in the official layout
# ------------------------------------------------------------------------------------------
def test_official_checkpoint_layout_loads_strictly(tmp_path):
    """A checkpoint as the official utils.save_checkpoint writes it (model, optimizer, lr_scheduler,
    max_accuracy, epoch, the pickled yacs config, apex amp state) loads safely and strictly; a checkpoint
    of another variant (static into dynamic) is refused with the mismatching keys named."""
    from common.checkpoint import CheckpointMismatchError, load_state_dict_strict, read_state_dict
    from dwnet.config import load_config

    torch.manual_seed(0)
    src = dwnet.create_model("dynamic_dwnet_tiny", depths=(1, 1, 1, 1))
    path = tmp_path / "ckpt_epoch_0.pth"
    torch.save({"model": src.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
                "max_accuracy": 0.0, "epoch": 0, "config": load_config("dynamic_dwnet_tiny_patch4_window7_224"),
                "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}}, path)
    torch.manual_seed(1)
    dst = load_state_dict_strict(dwnet.create_model("dynamic_dwnet_tiny", depths=(1, 1, 1, 1)),
                                 read_state_dict(path), source=str(path))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    with pytest.raises(CheckpointMismatchError, match="conv.conv1.weight"):
        load_state_dict_strict(dwnet.create_model("dwnet_tiny", depths=(1, 1, 1, 1)), read_state_dict(path),
                               source=str(path))
