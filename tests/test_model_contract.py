"""The classifier contract (common.models) over every registered variant, the variant table
(common.registry) and the timm bridge (common.timm_compat) with the calls timm's train.py makes."""
import copy

import pytest
import torch
import torch.nn.functional as F

import common.models
import dianet
import rlanet
from common.models import ClassifierModel, feature_net
from common.registry import REQUIRED_PRETRAINED_CFG_KEYS, Registry, UnknownModelError

# Every paper registry; each new paper adds its own here.
REGISTRIES = [dianet.REGISTRY, rlanet.REGISTRY]
PAPER_MODULES = {"dianet": dianet, "rlanet": rlanet}
SIZE = {"dianet": 32, "rlanet": 64}  # test input size per registry (CIFAR nets; ImageNet nets of stride 32)
ALL = [(r, v) for r in REGISTRIES for v in r.variants()]
TIMM = [(r, v) for r, v in ALL if v.paper]
IDS = [v.name for _, v in ALL]
TIMM_IDS = [v.name for _, v in TIMM]


def _x(seed=0, c=3, size=32, batch=1):
    return torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(seed))


def _small(registry, v, **over):
    """The variant at the smallest depth its constructor allows (same family, widths and head)."""
    if "layers" in v.kwargs:  # ImageNet ResNets: one block per stage
        return registry.create(v.name, layers=(1, 1, 1, 1), **over)
    if "depth" not in v.kwargs:
        return registry.create(v.name, **over)
    for depth in (8, 10, 11):
        try:
            return registry.create(v.name, depth=depth, **over)
        except ValueError:
            continue
    raise AssertionError(f"no small depth for {v.name}")


@pytest.fixture(scope="module")
def built():
    """Each named variant built once, in eval mode (float32, its own init)."""
    cache = {}

    def get(registry, v):
        if v.name not in cache:
            torch.manual_seed(0)
            cache[v.name] = registry.create(v.name).eval()
        return cache[v.name]

    return get


def test_table_covers_every_constructor():
    for r in REGISTRIES:
        assert r.variants(), r.name
        assert {v.model for v in r.variants()} == set(r.list_models()), r.name


@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_forward_is_head_of_features(registry, v, built):
    model = built(registry, v)
    assert isinstance(model, ClassifierModel)
    size = SIZE[registry.name]
    x = _x(size=size)
    side = size // model.feature_info[-1]["reduction"]
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
        assert torch.equal(out, model.forward_head(feats))
        pre = model.forward_head(feats, pre_logits=True)
    assert out.shape == (1, v.num_classes) and model.num_classes == v.num_classes
    assert feats.shape == (1, model.num_features, side, side)
    assert pre.shape == (1, model.num_features)
    assert torch.allclose(pre, feats.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    head = model.get_classifier()
    assert head is model.get_submodule(v.pretrained_cfg["classifier"])
    assert torch.allclose(out, F.linear(pre, head.weight, head.bias), rtol=0, atol=1e-5)
    assert model.no_weight_decay() == set()


@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_reset_classifier(registry, v, built):
    model = copy.deepcopy(built(registry, v))
    size = SIZE[registry.name]
    x = _x(1, size=size)
    side = size // model.feature_info[-1]["reduction"]
    keys = list(model.state_dict())
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(5)
        assert model(x).shape == (1, 5) and model.num_classes == 5
        assert list(model.state_dict()) == keys  # same names, new shapes
        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
        assert torch.equal(model(x), pre)
        model.reset_classifier(0, global_pool="max")
        assert torch.equal(model(x), model.forward_features(x).amax(dim=(2, 3)))
        model.reset_classifier(0, "")
        assert model(x).shape == (1, model.num_features, side, side)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(3, "")


@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_features_only_matches_feature_info(registry, v, built):
    model = built(registry, v)
    info = model.feature_info
    assert [set(i) >= {"num_chs", "reduction", "module"} for i in info] == [True] * len(info)
    size = SIZE[registry.name]
    x = _x(2, size=size)
    net = feature_net(model)  # shares the model's modules
    with torch.no_grad():
        maps = net(x)
        feats = model.forward_features(x)
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in info]
    assert [size // m.shape[-1] for m in maps] == [i["reduction"] for i in info]
    # the last map is forward_features (RLA-ResNet: its first channels, before the recurrent state)
    assert torch.equal(maps[-1], feats[:, :maps[-1].shape[1]])
    assert net.feature_info.channels() == [i["num_chs"] for i in info]
    # the registry's own create(features_only=True), and a subset of the maps
    torch.manual_seed(0)
    sub = registry.create(v.name, features_only=True, out_indices=(0, -1))
    sub.load_state_dict({k: t for k, t in model.state_dict().items() if k.split(".")[0] in dict(sub.named_children())})
    with torch.no_grad():
        got = sub.eval()(x)
    assert len(got) == 2 and torch.equal(got[0], maps[0]) and torch.equal(got[1], maps[-1])


@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_grad_checkpointing_equal_outputs_and_grads(registry, v, monkeypatch):
    torch.manual_seed(0)
    ref = _small(registry, v).double().train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    calls = []
    real = common.models.checkpoint
    monkeypatch.setattr(common.models, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x(3, batch=2, size=SIZE[registry.name]).double()
    w = torch.randn(2, v.num_classes, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    outs = []
    for m in (ref, ckpt):
        torch.manual_seed(5)  # same dropout masks
        out = m(x)
        (out * w).sum().backward()
        outs.append(out.detach())
    assert len(calls) == len(ckpt.stage_names)  # every stage ran under torch.utils.checkpoint
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12)
    for (k, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12), k
    with torch.no_grad():  # no checkpointing without autograd
        ckpt(x)
    assert len(calls) == len(ckpt.stage_names)


@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_group_matcher_covers_every_parameter(registry, v, built):
    from timm.models import group_parameters

    model = built(registry, v)
    n = len(list(model.parameters()))
    stages = [model.get_submodule(s) for s in model.stage_names]  # a stage may sit in a container: stages.0
    stages = [getattr(s, model.blocks_attr) if model.blocks_attr else s for s in stages]
    blocks = sum(len(s) if isinstance(s, (torch.nn.Sequential, torch.nn.ModuleList)) else 1 for s in stages)
    for coarse, n_groups in ((True, 2 + len(model.stage_names)), (False, 2 + blocks)):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sum(len(g) for g in groups.values()) == n
        assert len(groups) == n_groups  # stem, stages (or blocks; the DIA cell / final norm join the last), head
        first, *_, last = groups.values()
        assert not any(p.startswith(s + ".") for p in first for s in model.stage_names)  # the stem
        assert all(p.startswith(v.pretrained_cfg["classifier"] + ".") for p in last)


# ------------------------------------------------------------------------------------------
# The variant table
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("registry,v", ALL, ids=IDS)
def test_pretrained_cfg_complete(registry, v):
    from timm.models._pretrained import PretrainedCfg

    cfg = v.pretrained_cfg
    assert all(cfg.get(k) is not None for k in REQUIRED_PRETRAINED_CFG_KEYS), v.name
    PretrainedCfg(**cfg)  # only timm's field names
    if registry is dianet.REGISTRY:
        assert cfg["input_size"] == (3, 32, 32) and cfg["mean"] == dianet.CIFAR_MEAN and cfg["std"] == dianet.CIFAR_STD
    else:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        assert cfg["input_size"] == (3, 224, 224) and cfg["mean"] == IMAGENET_DEFAULT_MEAN
        assert cfg["std"] == IMAGENET_DEFAULT_STD
    model = registry.create(v.name)
    assert model.pretrained_cfg["architecture"] == v.name
    assert type(model.get_submodule(cfg["first_conv"])).__name__ == "Conv2d"
    assert model.get_submodule(cfg["classifier"]).out_features == cfg["num_classes"]
    assert v.describe().startswith(f"{v.model}(num_classes={v.num_classes}, ")


def test_registry_variant_api():
    reg = Registry("toy")

    @reg.register("lin")
    def lin(num_classes=3, width=2):
        return torch.nn.Linear(width, num_classes)

    cfg = {k: 1 for k in REQUIRED_PRETRAINED_CFG_KEYS}
    cfg["num_classes"] = 4
    v = reg.add_variant("lin8", "lin", dict(width=8), pretrained_cfg=cfg)
    assert reg.get_variant("lin8") is v and reg.variants() == [v] and reg.list_variants(paper=True) == []
    assert v.build_kwargs(width=3) == dict(num_classes=4, width=3)
    assert reg.create("lin8").weight.shape == (4, 8) and reg.create("lin8", num_classes=2).weight.shape == (2, 8)
    assert "lin8" in reg and reg.list_models() == ["lin"]
    with pytest.raises(TypeError):
        v.kwargs["width"] = 1  # read-only
    with pytest.raises(ValueError, match="lacks mean"):
        reg.add_variant("x", "lin", pretrained_cfg={k: 1 for k in REQUIRED_PRETRAINED_CFG_KEYS if k != "mean"})
    with pytest.raises(ValueError, match="num_classes in pretrained_cfg"):
        reg.add_variant("y", "lin", dict(num_classes=2), pretrained_cfg=cfg)
    with pytest.raises(ValueError, match="already registered"):
        reg.add_variant("lin8", "lin", pretrained_cfg=cfg)
    with pytest.raises(UnknownModelError, match="choose one of: lin"):
        reg.add_variant("z", "conv", pretrained_cfg=cfg)
    with pytest.raises(UnknownModelError, match="variant 'nope'; choose one of: lin8"):
        reg.get_variant("nope")
    with pytest.raises(ValueError, match="out_indices needs features_only"):
        dianet.create_model("dia_resnet29", out_indices=(1,))


def test_benchmark_aliases_come_from_the_table():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "throughput.py")
    spec = importlib.util.spec_from_file_location("layerzoo_throughput_contract", path)
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    assert tp.ALIASES == {f"{r.name}:{v.name}": (r.name, v.model, v.build_kwargs()) for r, v in TIMM}


# ------------------------------------------------------------------------------------------
# timm: the calls of timm's train.py, same numbers as our create_model, no shadowing
# ------------------------------------------------------------------------------------------
def _train_py_create(name, **over):
    """timm.create_model exactly as timm's train.py calls it with its default flags."""
    import timm

    kw = dict(pretrained=False, in_chans=3, num_classes=None, drop_rate=0.0, drop_path_rate=None,
              drop_block_rate=None, global_pool=None, bn_momentum=None, bn_eps=None, scriptable=False,
              checkpoint_path="")
    kw.update(over)
    return timm.create_model(name, **kw)


@pytest.mark.parametrize("registry,v", TIMM, ids=TIMM_IDS)
def test_timm_train_py_calls(registry, v):
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = _train_py_create(v.name)
    assert model.num_classes == v.num_classes  # train.py reads it when --num-classes is not given
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == v.name
    assert {k: cfg[k] for k in v.pretrained_cfg} == dict(v.pretrained_cfg)
    data = resolve_data_config({}, model=model)
    assert data == {k: v.pretrained_cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct",
                                                     "crop_mode")}
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # same module and weights as ours
    ours = PAPER_MODULES[registry.name].create_model(v.name)
    assert type(ours) is type(model) and list(ours.state_dict()) == list(model.state_dict())
    ours.load_state_dict(model.state_dict())
    x = _x(6, size=SIZE[registry.name])
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ours.eval()(x))


def test_timm_features_only_and_kwargs(tmp_path):
    import timm

    x = _x(7)
    torch.manual_seed(0)
    feats = timm.create_model("dia_resnet164", depth=11, features_only=True, out_indices=(1, -1))
    assert feats.feature_info.channels() == [128, 256] and feats.feature_info.reduction() == [2, 4]
    with torch.no_grad():
        maps = feats.eval()(x)
    assert [tuple(m.shape) for m in maps] == [(1, 128, 16, 16), (1, 256, 8, 8)]
    assert feats.pretrained_cfg["input_size"] == (3, 32, 32)
    # in_chans, global_pool, num_classes, bn_momentum / bn_eps, pretrained_cfg_overlay
    m = _train_py_create("dia_preresnet164", depth=11, in_chans=1, global_pool="max", num_classes=7,
                         bn_momentum=0.01, bn_eps=1e-3, pretrained_cfg_overlay=dict(mean=(0.5,), std=(0.25,)))
    assert m.conv1.weight.shape[1] == 1 and m.fc.out_features == 7
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert bns and all(b.momentum == 0.01 and b.eps == 1e-3 for b in bns)
    assert m.pretrained_cfg["mean"] == (0.5,) and m.pretrained_cfg["num_classes"] == 100
    with torch.no_grad():
        x1 = x[:, :1]
        assert torch.equal(m.eval()(x1), m.fc(m.forward_features(x1).amax(dim=(2, 3))))
    # drop_rate is timm's dropout before the classifier
    d = _train_py_create("dia_wrn52_4", depth=10, drop_rate=0.5).train()
    pre = torch.ones(2, d.num_features)
    torch.manual_seed(0)
    ref = d.fc(F.dropout(pre, 0.5, training=True))
    torch.manual_seed(0)
    assert torch.equal(d.forward_head(pre[:, :, None, None].expand(-1, -1, 8, 8).contiguous()), ref)
    # what cannot apply is refused, neutral values are accepted
    _train_py_create("dia_resnet164", depth=11, drop_path_rate=0.0, drop_block_rate=0.0)
    with pytest.raises(ValueError, match="drop_path_rate=0.1 cannot apply"):
        _train_py_create("dia_resnet164", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="drop_block_rate=0.2 cannot apply"):
        _train_py_create("dia_resnet164", drop_block_rate=0.2)
    with pytest.raises(ValueError, match="out_indices needs features_only"):
        timm.create_model("dia_resnet164", out_indices=(1,))
    with pytest.raises(RuntimeError, match="no weights are downloaded"):
        timm.create_model("dia_resnet164", pretrained=True)
    # pretrained=True from a local file (official layout: 'state_dict' with a 'module.' prefix), loaded by
    # timm with weights_only=True; a different num_classes drops the classifier
    torch.manual_seed(1)
    src = dianet.create_model("dia_resnet164", depth=11)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 1, "state_dict": {"module." + k: t for k, t in src.state_dict().items()}}, path)
    torch.manual_seed(2)
    got = timm.create_model("dia_resnet164", depth=11, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), got.state_dict().values()))
    got10 = timm.create_model("dia_resnet164", depth=11, num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(got10.conv1.weight, src.conv1.weight) and got10.fc.out_features == 10
    # train.py --pretrained --pretrained-path PATH --num-classes 3 (its overlay forces head adaptation)
    got3 = _train_py_create("dia_resnet164", depth=11, num_classes=3, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(path), num_classes=-1))
    assert torch.equal(got3.layer3.lstm.w_ih[0].seq[0].weight, src.layer3.lstm.w_ih[0].seq[0].weight)
    assert got3.num_classes == 3 and got3.fc.out_features == 3


def test_timm_registration_does_not_shadow_or_pollute():
    import timm
    from timm.models import model_entrypoint

    from common.timm_compat import register_timm

    for r in REGISTRIES:
        names = [v.name for v in r.variants(paper=True)]
        assert sorted(timm.list_models(module="layerzoo_" + r.name)) == sorted(names)
        mod = PAPER_MODULES[r.name]
        for name in names:
            assert model_entrypoint(name).__module__ == f"common.timm_compat.layerzoo_{r.name}"
            assert not hasattr(mod, name) and not hasattr(mod.models, name)
            assert name not in mod.__all__ and name not in mod.models.__all__
        assert not hasattr(mod.models, "default_cfgs")
    assert register_timm("resnet50", lambda **kw: None, {}) is False
    assert model_entrypoint("resnet50").__module__ == "timm.models.resnet"
    assert register_timm("dia_resnet164", lambda **kw: None, {}) is True  # already ours: unchanged
    assert model_entrypoint("dia_resnet164").__module__ == "common.timm_compat.layerzoo_dianet"
