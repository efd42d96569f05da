"""DLA models against the official code: every CIFAR and ImageNet fingerprint (float64, det_init weights) to
1e-10 relative, the official state_dict manifests and parameter counts, the batch-0 context quirk and its fix,
and the model API (features / head / feature_info, errors)."""
from pathlib import Path

import pytest
import torch
from timm.models import FeatureListNet

import dla
from common.fingerprint import det_init_, det_input, manifest, rel_err
from common.registry import UnknownModelError

DATA = Path(__file__).parent / "data" / "dla" / "fingerprints.pt"
FPS = torch.load(DATA, weights_only=True)

# float64 forwards at 224x224 of the 101/152-layer ImageNet nets take 4-11 s each on one core
SLOW = {"imagenet_resnet101", "imagenet_resnet101_dla_l", "imagenet_resnet101_se", "imagenet_resnet101_eca",
        "imagenet_resnet152", "imagenet_resnet152_se", "imagenet_resnet152_eca", "imagenet_resnext101_32x4d",
        "imagenet_resnext101_32x4d_se", "imagenet_resnext101_32x4d_eca"}


def _manifest_lines(model):
    return "\n".join(f"{k} {'x'.join(map(str, s))} {d}" for k, s, d in manifest(model))


def _det_model(name, **kwargs):
    """Built in float32, det_init_ weights, then float64 in eval mode (as the fingerprints were made)."""
    model = dla.create_model(name, **kwargs)
    model.eval()
    det_init_(model)
    return model.double()


def test_fingerprint_data_covers_every_non_detection_variant():
    assert len(FPS) == 36
    assert not any(v.startswith("det_") for v in FPS)
    assert {fp["name"] for fp in FPS.values()} <= set(dla.list_models())
    assert set(dla.list_models()) == {fp["name"] for fp in FPS.values()}


@pytest.mark.parametrize("variant", [pytest.param(v, marks=pytest.mark.slow) if v in SLOW else v
                                     for v in sorted(FPS)])
def test_official_fingerprint(variant):
    fp = FPS[variant]
    model = dla.create_model(fp["name"], **fp["kwargs"])
    assert sum(p.numel() for p in model.parameters()) == fp["num_params"]
    model.eval()
    det_init_(model)
    model.double()
    assert _manifest_lines(model) == fp["manifest"]  # keys, shapes, dtypes and order
    with torch.no_grad():
        out = model(det_input(tuple(fp["input_shape"]), fp["seed"]))
    assert out.dtype == torch.float64
    assert rel_err(out, fp["output"]) <= 1e-10


@pytest.mark.parametrize("name,depth,params", [("resnet", 110, 1_736_564), ("senet", 110, 1_748_660),
                                               ("ecanet", 110, 1_736_726)])
def test_cifar_basicblock_param_counts(name, depth, params):
    model = dla.create_model(name, num_classes=100, depth=depth, block_name="BasicBlock")
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


# ---------------------------------------------------------------------------------------------------------
# The batch-0 context quirk
# ---------------------------------------------------------------------------------------------------------
QUIRK_MODELS = [("dla_l", dict(num_classes=10, depth=20, block_name="bottleneck"), (3, 3, 32, 32)),
                ("dla_b", dict(num_classes=10, depth=29, block_name="bottleneck"), (3, 3, 32, 32)),
                ("resnet50_dla_l", dict(num_classes=10), (3, 3, 64, 64))]


@pytest.mark.parametrize("name,kwargs,shape", QUIRK_MODELS, ids=[m[0] for m in QUIRK_MODELS])
def test_batch_context_quirk_and_fix(name, kwargs, shape):
    official = _det_model(name, **kwargs)
    fixed = dla.create_model(name, fix_batch_context=True, **kwargs).double().eval()
    fixed.load_state_dict(official.state_dict(), strict=True)  # the same keys and weights
    x = det_input(shape, 1)
    other = torch.cat((det_input((1, *shape[1:]), 2), x[1:]))  # another sample 0
    with torch.no_grad():
        off_x, off_other = official(x), official(other)
        fix_x, fix_other = fixed(x), fixed(other)
        alone = torch.cat([official(x[j:j + 1]) for j in range(shape[0])])  # a batch of one has no quirk
    # officially, samples j != 0 depend on sample 0; sample 0 does not depend on the others
    assert rel_err(off_x[1:], off_other[1:]) > 1e-6
    close = dict(rtol=1e-9, atol=0)  # batch sizes 1 and 3 round differently
    torch.testing.assert_close(off_x[:1], alone[:1], **close)
    # the fix: every sample as if alone; sample 0 unchanged, the others differ from the official outputs
    torch.testing.assert_close(fix_x, alone, **close)
    torch.testing.assert_close(fix_other[1:], fix_x[1:], **close)
    torch.testing.assert_close(fix_x[:1], off_x[:1], **close)
    assert rel_err(fix_x[1:], off_x[1:]) > 1e-6


def test_float32_matches_float64_on_cpu():
    model = dla.create_model("dla_l", num_classes=100, depth=20, block_name="bottleneck", drop_path=0.2).eval()
    det_init_(model)
    x = det_input((2, 3, 32, 32), 0)
    with torch.no_grad():
        out32 = model(x.float())
        out64 = model.double()(x)
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert rel_err(out32, out64) < 1e-4
    assert rel_err(out64, FPS["cifar_dla_l_20"]["output"]) <= 1e-10


# ---------------------------------------------------------------------------------------------------------
# Model API
# ---------------------------------------------------------------------------------------------------------
API_MODELS = [("dla_l", dict(depth=20), 32), ("dla_b", dict(depth=20), 32), ("mrla_base", dict(depth=20), 32),
              ("mrla_light", dict(depth=20), 32), ("dia_resnet", dict(depth=20), 32), ("senet", dict(depth=20), 32),
              ("resnet50_dla_l", {}, 64), ("resnext50_32x4d_eca", {}, 64), ("senet_50", {}, 64)]


@pytest.mark.parametrize("name,kwargs,size", API_MODELS, ids=[m[0] for m in API_MODELS])
def test_features_head_and_feature_info(name, kwargs, size):
    model = dla.create_model(name, num_classes=7, drop_path=0.1, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    maps = []
    hooks = [model.get_submodule(info["module"]).register_forward_hook(lambda m, i, o: maps.append(o))
             for info in model.feature_info]
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model(x)
        pooled = model.forward_head(feats, pre_logits=True)
    for h in hooks:
        h.remove()
    assert len(maps) == 2 * len(model.feature_info)  # forward_features, then forward
    for info, fmap in zip(model.feature_info, maps):
        assert fmap.shape == (2, info["num_chs"], size // info["reduction"], size // info["reduction"])
    assert torch.equal(maps[len(model.feature_info) - 1], feats)
    assert feats.shape[1] == model.num_features and pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model.forward_head(feats), logits)
    assert logits.shape == (2, 7)
    # timm's features adapter runs the top-level children in order (``stages.i`` lives in a Sequential)
    net = FeatureListNet(model, out_indices=tuple(range(len(model.feature_info))),
                         flatten_sequential="." in model.feature_info[0]["module"]).eval()
    with torch.no_grad():
        stage_maps = net(x)
    assert [m.shape for m in stage_maps] == [m.shape for m in maps[:len(model.feature_info)]]
    torch.testing.assert_close(stage_maps[-1], feats)


def test_drop_path_only_on_layer_attention_branches():
    from timm.layers import DropPath

    for name, kwargs in (("dla_l", dict(depth=20)), ("dla_b", dict(depth=20)), ("mrla_base", dict(depth=20)),
                         ("mrla_light", dict(depth=20)), ("resnet50_dla_l", {})):
        model = dla.create_model(name, drop_path=0.3, **kwargs)
        rates = {n: m.drop_prob for n, m in model.named_modules() if isinstance(m, DropPath)}
        assert rates and set(rates.values()) == {0.3}
        assert all("attention" in n or n.endswith(".drop_path") for n in rates)
        assert not any(isinstance(m, DropPath) for m in dla.create_model(name, **kwargs).modules())
    for name in ("resnet", "senet", "ecanet", "dia_resnet"):
        model = dla.create_model(name, depth=20, block_name="bottleneck", drop_path=0.3)
        assert not any(isinstance(m, DropPath) for m in model.modules())  # accepted, unused (official)


def test_train_step_runs_and_keeps_dtype():
    model = dla.create_model("dla_b", num_classes=10, depth=20, drop_path=0.2).double().train()
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.float64))
    out.logsumexp(1).mean().backward()
    assert out.dtype == torch.float64
    assert all(p.grad is not None for n, p in model.named_parameters() if "lstm" in n or "attention" in n)


def test_bad_arguments_give_one_clear_error():
    with pytest.raises(ValueError, match="dla_l: block_name='basicblock' is not available"):
        dla.create_model("dla_l", depth=20, block_name="BasicBlock")
    with pytest.raises(ValueError, match=r"9n\+2"):
        dla.create_model("dla_b", depth=21)
    with pytest.raises(ValueError, match="block_name must be"):
        dla.create_model("resnet", depth=20, block_name="pyramid")
    with pytest.raises(ValueError, match="4-element"):
        dla.create_model("resnet50_eca", k_size=[3, 5])
    with pytest.raises(UnknownModelError, match="unknown dla model 'dla_50'.*resnet50_dla_l"):
        dla.create_model("dla_50")


def test_registry_and_default_cfgs():
    assert dla.default_cfg("dla_l")["input_size"] == (3, 32, 32)
    assert dla.default_cfg("resnet50_dla_l")["input_size"] == (3, 224, 224)
    names = [row[0] for row in dla.CIFAR_VARIANTS]
    assert len(names) == len(set(names)) and "dla_l110" in names
    for name, ctor, kwargs, cfg, _ in dla.CIFAR_VARIANTS:
        assert ctor in dla.list_models() and cfg["num_classes"] == 100
        fp = FPS[f"cifar_{name[:-3]}_{name[-3:]}"]
        assert dict(num_classes=100, **kwargs) == fp["kwargs"]


# ---------------------------------------------------------------------------------------------------------
# The classifier contract (common.models), the variant table and timm
# ---------------------------------------------------------------------------------------------------------
def test_variants_in_timm_and_features_only():
    import timm

    assert dla.REGISTRY.list_variants(paper=True) == ["dla_b110", "dla_l110"]
    ours = dla.create_model("dla_l", num_classes=100, depth=110, block_name="bottleneck", drop_path=0.2)
    theirs = timm.create_model("dla_l110")
    assert manifest(theirs) == manifest(ours)
    assert theirs.pretrained_cfg["architecture"] == "dla_l110" and theirs.pretrained_cfg["input_size"] == (3, 32, 32)
    r50 = timm.create_model("resnet50_dla_l", num_classes=10, drop_rate=0.1)
    assert manifest(r50) == manifest(dla.create_model("resnet50_dla_l", num_classes=10))
    assert r50.pretrained_cfg["input_size"] == (3, 224, 224) and r50.drop_rate == 0.1
    assert type(timm.create_model("resnet50")).__module__.startswith("timm.")  # baselines never shadow timm
    x = torch.randn(1, 3, 32, 32)
    for name in ("dla_b", "dla_l", "mrla_base", "dia_resnet"):
        model = dla.create_model(name, depth=20).eval()
        net = dla.create_model(name, depth=20, features_only=True, out_indices=(0, -1)).eval()
        net.load_state_dict({k.replace("stages.", "stages_", 1): v for k, v in model.state_dict().items()
                             if k.split(".")[0] in ("conv1", "bn1", "stages", "layer1", "layer2", "layer3")})
        with torch.no_grad():
            first, last = net(x)
            assert torch.equal(last, model.forward_features(x))
        assert first.shape == (1, 64, 32, 32)


@pytest.mark.parametrize("name", ["dla_l", "dla_b", "mrla_light"])
def test_reset_classifier_and_grad_checkpointing(name, monkeypatch):
    import common.models

    calls = []
    real = common.models.checkpoint
    monkeypatch.setattr(common.models, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    ref = dla.create_model(name, num_classes=10, depth=20, drop_path=0.1).double().train()
    ckpt = dla.create_model(name, num_classes=10, depth=20, drop_path=0.1).double().train()
    ckpt.load_state_dict(ref.state_dict())
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    outs = []
    for m in (ref, ckpt):
        torch.manual_seed(1)  # the same DropPath masks
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
    assert len(calls) == 3  # each stage of the checkpointed model
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-12)
    for (k, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-12, msg=k)
    from timm.models import group_parameters

    n_params = len(list(ref.parameters()))
    for coarse, n_groups in ((True, 2 + 3), (False, 2 + 3 * 2)):  # stem, stages or blocks (n = 2), head
        groups = list(group_parameters(ref, ref.group_matcher(coarse=coarse)).values())
        assert len(groups) == n_groups and sum(len(g) for g in groups) == n_params
        assert groups[0] == ["conv1.weight", "bn1.weight", "bn1.bias"] and groups[-1] == ["fc.weight", "fc.bias"]
    ref.eval().reset_classifier(0)
    with torch.no_grad():
        assert torch.equal(ref(x), ref.forward_features(x).mean((2, 3)))
