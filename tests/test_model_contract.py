"""The classifier contract (common.models) over every registered model, the variant table
(common.registry) and the timm bridge (common.timm_compat) with the calls timm's train.py makes.

Each paper's named variants are contract cases; a constructor without a named variant (DLA's ImageNet
models) is a case of its own with its default cfg. What differs between the papers is in ``SPEC``, one row
per paper: the build that runs the same code at a small size, the expected data cfg, ``no_weight_decay()``,
where grad checkpointing calls ``checkpoint`` and how often. Cases are built at the smallest size that runs
the same code: DLA's CIFAR models at depth 20 (two blocks per stage, one case per constructor), its ImageNet
models at only their 50-layer depth (``same_code``: the deeper ones are the same classes with longer stages,
checked against the official outputs in tests/test_dla_models.py), DWNet with one block per stage but two
in the third (every named variant: the spatial op differs), RLA-Net's ResNets likewise (one case per
option set; the 101/152-layer variants are their 50-layer case) and its RLA-MobileNetV2 variants at state
width k = 6 (the k6 ... k32 variants are one case each for RLA / dsRLA, with and without ECA). Every named
variant's own cfg and full build are checked in the variant-table tests, every paper variant through timm.
ImageNet models run at 64x64 input (every stage still downsamples)."""
import copy
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import pytest
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

import common.models
import dianet
import dla
import dwnet
import rlanet
from common.models import ClassifierModel, feature_net
from common.registry import REQUIRED_PRETRAINED_CFG_KEYS, Registry, UnknownModelError, Variant

# Every paper registry; each new paper adds its own here and a row to SPEC.
REGISTRIES = [dianet.REGISTRY, dla.REGISTRY, dwnet.REGISTRY, rlanet.REGISTRY]
PAPER_MODULES = {"dianet": dianet, "dla": dla, "dwnet": dwnet, "rlanet": rlanet}


def _data(input_size, interpolation, mean, std, crop_pct):
    """What timm's resolve_data_config gives for a model of that cfg."""
    return dict(input_size=input_size, interpolation=interpolation, mean=mean, std=std, crop_pct=crop_pct,
                crop_mode="center")


def _stage_calls(model):
    """One ``checkpoint`` call per stage (common.models.ClassifierModel's trunk)."""
    return len(model.stage_names)


def _block_calls(model):
    """One ``checkpoint`` call per block (the official ``use_checkpoint`` of a stage's block loop)."""
    return sum(len(getattr(model.get_submodule(s), model.blocks_attr)) for s in model.stage_names)


def _none(model):
    return 0


def _no(model):
    return False


# Per paper:
#   small: constructor overrides that keep the code path and make a case cheap (applied where the variant
#     sets that argument; variants that differ only in those arguments are one case, e.g. the depths of a
#     constructor; None: every full variant, grad checkpointing searches a small ``depth``);
#   small_timm: the overrides the timm train.py cases are built with (None: the full model);
#   all_named: every constructor has a named variant (none outside the table);
#   timm_constructors: constructors without a named variant registered in timm under their official names;
#   same_code: deeper constructors -> the case that runs the same code (same class, longer stages);
#   data: input side -> resolve_data_config of the paper's cfg at that side;
#   no_wd: no_weight_decay(); ckpt_module / ckpt_calls: the module whose ``checkpoint`` grad checkpointing
#     calls, and the number of calls of one forward;
#   state_chs: channels forward_features appends after the last feature map (a recurrent state);
#   one_block_stages: the model's stages are single blocks (its fine and coarse groups coincide).
SPEC = {
    "dianet": dict(
        small=None, small_timm=None, all_named=True, timm_constructors=(), same_code={},
        data={32: _data((3, 32, 32), "bilinear", dianet.CIFAR_MEAN, dianet.CIFAR_STD, 1.0)},
        no_wd=set(), ckpt_module=common.models, ckpt_calls=_stage_calls, state_chs=_none, one_block_stages=_no),
    "dla": dict(
        small={"depth": 20}, small_timm=None, all_named=False,
        timm_constructors=("resnet50_dla_l", "resnet101_dla_l"),
        same_code={n: re.sub(r"101|152", "50", n) for n in dla.list_models() if re.search(r"101|152", n)},
        data={32: _data((3, 32, 32), "bilinear", dla.CIFAR_MEAN, dla.CIFAR_STD, 1.0),
              224: _data((3, 224, 224), "bilinear", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875)},
        no_wd=set(), ckpt_module=common.models, ckpt_calls=_stage_calls, state_chs=_none, one_block_stages=_no),
    "dwnet": dict(
        small={"depths": (1, 1, 2, 1)}, small_timm={"depths": (1, 1, 2, 1)}, all_named=True,
        timm_constructors=(), same_code={},
        data={224: _data((3, 224, 224), "bicubic", dwnet.IMAGENET_MEAN, dwnet.IMAGENET_STD, 0.875)},
        no_wd={"absolute_pos_embed"}, ckpt_module=dwnet.models.dwnet, ckpt_calls=_block_calls, state_chs=_none,
        one_block_stages=_no),
    "rlanet": dict(
        # the RLA-MobileNetV2 variants differ in the state's width k only: one case each at k = 6
        small={"layers": (1, 1, 2, 1), "rla_channel": 6}, small_timm={"layers": (1, 1, 2, 1)}, all_named=True,
        timm_constructors=(), same_code={},
        data={224: _data((3, 224, 224), "bilinear", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, 0.875)},
        no_wd=set(), ckpt_module=common.models, ckpt_calls=_stage_calls,
        state_chs=lambda m: m.rla_channel if isinstance(m, rlanet.RLAResNet) else 0,  # RLA-ResNet: [x, h]
        one_block_stages=lambda m: isinstance(m, rlanet.models.MobileNetV2Base)),  # each inverted residual
}


@dataclass(frozen=True)
class Case:
    registry: Registry
    name: str  #: a named variant, or a constructor without one
    cfg: Mapping[str, Any]  #: its pretrained_cfg (the variant's, else the constructor's default cfg)
    variant: Optional[Variant] = None
    kw: Mapping[str, Any] = field(default_factory=dict)  #: overrides for a cheap build of the same code

    @property
    def spec(self):
        return SPEC[self.registry.name]

    @property
    def model(self):
        return self.variant.model if self.variant else self.name

    @property
    def num_classes(self):
        return self.cfg["num_classes"]

    @property
    def size(self):
        """Input side: the CIFAR 32, the ImageNet models at 64 (every stage still downsamples)."""
        return 32 if self.cfg["input_size"][-1] == 32 else 64

    @property
    def pooled(self):
        """Side of the last feature map at ``size``."""
        return self.size * self.cfg["pool_size"][0] // self.cfg["input_size"][-1]

    def create(self, **kw):
        return self.registry.create(self.name, **{**self.kw, **kw})


def _small_kw(registry, v, key="small"):
    """The paper's small-build overrides that apply to variant ``v``."""
    return {k: x for k, x in (SPEC[registry.name][key] or {}).items() if k in v.kwargs}


def _cases(registry):
    spec = SPEC[registry.name]
    out, seen, named = [], set(), set()
    for v in registry.variants():
        named.add(v.model)
        kw = _small_kw(registry, v)
        same = (v.model, tuple(sorted((k, repr(x)) for k, x in v.kwargs.items() if k not in kw)))
        if spec["small"] is not None and same in seen:
            continue  # one small case: the variants differ only in the number of blocks (or a width)
        seen.add(same)
        out.append(Case(registry, v.name, v.pretrained_cfg, v, kw))
    for name in registry.list_models():
        if name not in named and name not in spec["same_code"]:
            out.append(Case(registry, name, registry.default_cfg(name)))
    return out


ALL = [c for r in REGISTRIES for c in _cases(r)]
IDS = [f"{c.registry.name}:{c.name}" for c in ALL]


def _timm_cases():
    out = []
    for r in REGISTRIES:
        out += [Case(r, v.name, v.pretrained_cfg, v, _small_kw(r, v, "small_timm")) for v in r.variants(paper=True)]
        out += [Case(r, n, r.default_cfg(n)) for n in SPEC[r.name]["timm_constructors"]]
    return out


TIMM = _timm_cases()
TIMM_IDS = [f"{c.registry.name}:{c.name}" for c in TIMM]


def _x(seed=0, c=3, size=32, batch=1):
    return torch.randn(batch, c, size, size, generator=torch.Generator().manual_seed(seed))


def _small(case, **over):
    """The case at the smallest depth its constructor allows (same family, widths and head)."""
    if case.kw or "depth" not in (case.variant.kwargs if case.variant else {}):
        return case.create(**over)
    for depth in (8, 10, 11):
        try:
            return case.create(depth=depth, **over)
        except ValueError:
            continue
    raise AssertionError(f"no small depth for {case.name}")


def _stage(model, name):
    return model.get_submodule(name)


def _n_blocks(model, name):
    """Blocks of a stage (a stage that is not a container is one block)."""
    stage = _stage(model, name)
    stage = getattr(stage, model.blocks_attr) if model.blocks_attr else stage
    return len(stage) if isinstance(stage, (torch.nn.Sequential, torch.nn.ModuleList)) else 1


@pytest.fixture(scope="module")
def built():
    """Each case built once, in eval mode (float32, its own init)."""
    cache = {}

    def get(case):
        key = (case.registry.name, case.name)
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = case.create().eval()
        return cache[key]

    return get


def test_contract_covers_every_constructor():
    for r in REGISTRIES:
        assert r.variants(), r.name
        cases = [c for c in ALL if c.registry is r]
        spec = SPEC[r.name]
        assert {c.model for c in cases} | set(spec["same_code"]) == set(r.list_models()), r.name
        if spec["all_named"]:  # the table covers every constructor
            assert {v.model for v in r.variants()} == set(r.list_models()), r.name
        # a constructor outside the table has a complete cfg of its own
        for c in cases:
            if c.variant is None:
                assert all(c.cfg.get(k) is not None for k in REQUIRED_PRETRAINED_CFG_KEYS), c.name
    assert set(SPEC) == set(PAPER_MODULES) == {r.name for r in REGISTRIES}
    for r_name, spec in SPEC.items():
        reg = PAPER_MODULES[r_name].REGISTRY
        for deep, case in spec["same_code"].items():
            assert case in reg.list_models() and reg.default_cfg(deep) == reg.default_cfg(case), deep


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_forward_is_head_of_features(case, built):
    model = built(case)
    assert isinstance(model, ClassifierModel)
    x = _x(size=case.size)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
        assert torch.equal(out, model.forward_head(feats))
        pre = model.forward_head(feats, pre_logits=True)
    assert out.shape == (1, case.num_classes) and model.num_classes == case.num_classes
    assert feats.shape == (1, model.num_features, case.pooled, case.pooled)
    assert case.pooled == case.size // model.feature_info[-1]["reduction"]
    assert pre.shape == (1, model.num_features)
    assert torch.allclose(pre, feats.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    head = model.get_classifier()
    assert head is model.get_submodule(case.cfg["classifier"])
    assert torch.allclose(out, F.linear(pre, head.weight, head.bias), rtol=0, atol=1e-5)
    assert model.no_weight_decay() == case.spec["no_wd"]


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_reset_classifier(case, built):
    model = copy.deepcopy(built(case))
    x = _x(1, size=case.size)
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
        assert model(x).shape == (1, model.num_features, case.pooled, case.pooled)
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(3, "")


def _model_key(key, children):
    """The model's state_dict key of a feature extractor's key: timm's FeatureListNet flattens a top-level
    Sequential one level and names its children ``<name>_<i>`` (``stages_0.x`` is ``stages.0.x``)."""
    top, _, rest = key.partition(".")
    if top not in children:
        top = ".".join(top.rsplit("_", 1))
    return f"{top}.{rest}"


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_features_only_matches_feature_info(case, built):
    model = built(case)
    info = model.feature_info
    assert [set(i) >= {"num_chs", "reduction", "module"} for i in info] == [True] * len(info)
    x = _x(2, size=case.size)
    net = feature_net(model)  # shares the model's modules
    with torch.no_grad():
        maps = net(x)
        feats = model.forward_features(x)
    assert [m.shape[1] for m in maps] == [i["num_chs"] for i in info]
    assert [case.size // m.shape[-1] for m in maps] == [i["reduction"] for i in info]
    # the last map is forward_features (or its first channels, before a recurrent state the paper appends)
    assert feats.shape[1] == maps[-1].shape[1] + case.spec["state_chs"](model)
    assert torch.equal(maps[-1], feats[:, :maps[-1].shape[1]])
    assert net.feature_info.channels() == [i["num_chs"] for i in info]
    # the registry's own create(features_only=True), and a subset of the maps
    torch.manual_seed(1)  # other weights than the model's until loaded
    sub = case.create(features_only=True, out_indices=(0, -1))
    full, children = model.state_dict(), dict(model.named_children())
    sub.load_state_dict({k: full[_model_key(k, children)] for k in sub.state_dict()})  # strict: every key
    with torch.no_grad():
        got = sub.eval()(x)
    assert len(got) == 2 and torch.equal(got[0], maps[0]) and torch.equal(got[1], maps[-1])


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_grad_checkpointing_equal_outputs_and_grads(case, monkeypatch):
    torch.manual_seed(0)
    ref = _small(case).double().train()
    ckpt = copy.deepcopy(ref)
    ckpt.set_grad_checkpointing(True)
    calls = []
    site = case.spec["ckpt_module"]
    real = site.checkpoint
    monkeypatch.setattr(site, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = _x(3, batch=2, size=case.size).double()
    w = torch.randn(2, case.num_classes, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    outs = []
    for m in (ref, ckpt):
        torch.manual_seed(5)  # same dropout / drop-path masks
        out = m(x)
        (out * w).sum().backward()
        outs.append(out.detach())
    n_calls = case.spec["ckpt_calls"](ckpt)
    assert n_calls >= len(ckpt.stage_names)
    assert len(calls) == n_calls  # every stage (or block) ran under torch.utils.checkpoint
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=1e-12)
    for (k, a), b in zip(ref.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=0, atol=1e-12), k
    with torch.no_grad():  # no checkpointing without autograd
        ckpt(x)
    assert len(calls) == n_calls


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_group_matcher_covers_every_parameter(case, built):
    from timm.models import group_parameters

    model = built(case)
    n = len(list(model.parameters()))
    names = [k for k, _ in model.trunk()]
    stem = names[: names.index(model.stage_names[0].split(".")[0])]
    modules = [k for k, _ in model.named_modules()]  # the stem's modules come before the first stage
    before_stages = set(modules[: modules.index(model.stage_names[0])])
    blocks = sum(_n_blocks(model, s) for s in model.stage_names)
    if case.spec["one_block_stages"](model):
        assert blocks == len(model.stage_names)
    else:
        assert blocks > len(model.stage_names)  # at least one stage of several blocks
    for coarse, n_groups in ((True, 2 + len(model.stage_names)), (False, 2 + blocks)):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        assert sum(len(g) for g in groups.values()) == n
        assert len(groups) == n_groups  # stem, stages (or blocks; the stage's shared cells / final norm join
        first, *_, last = groups.values()  # its last block), head
        if stem:  # stages that are top-level children: the stem is the trunk's children before them
            assert all(p.split(".")[0] in stem for p in first)
        assert all(p.rpartition(".")[0] in before_stages for p in first)
        assert not any(p.startswith(s + ".") for p in first for s in model.stage_names)
        assert all(p.startswith(case.cfg["classifier"] + ".") for p in last)


# ------------------------------------------------------------------------------------------
# The variant table
# ------------------------------------------------------------------------------------------
def _expected_data(case):
    """The paper's data cfg at the case's input side (SPEC)."""
    data = case.spec["data"]
    side = case.cfg["input_size"][-1]
    assert side in data, f"{case.name}: input side {side}, the paper's table has {sorted(data)}"
    return data[side]


VARIANT_CASES = [Case(r, v.name, v.pretrained_cfg, v) for r in REGISTRIES for v in r.variants()] + \
    [c for c in ALL if c.variant is None]


@pytest.mark.parametrize("case", VARIANT_CASES, ids=[f"{c.registry.name}:{c.name}" for c in VARIANT_CASES])
def test_pretrained_cfg_complete(case):
    from timm.models._pretrained import PretrainedCfg

    cfg = case.cfg
    assert all(cfg.get(k) is not None for k in REQUIRED_PRETRAINED_CFG_KEYS), case.name
    PretrainedCfg(**cfg)  # only timm's field names
    data = _expected_data(case)
    assert (cfg["input_size"], cfg["mean"], cfg["std"]) == (data["input_size"], data["mean"], data["std"])
    model = case.create()
    if case.variant is not None:
        assert model.pretrained_cfg["architecture"] == case.name
        assert case.variant.describe().startswith(f"{case.model}(num_classes={case.num_classes}, ")
    assert type(model.get_submodule(cfg["first_conv"])).__name__ == "Conv2d"
    assert model.get_submodule(cfg["classifier"]).out_features == cfg["num_classes"]


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
    assert "dianet" in tp.PAPERS and set(tp.PAPERS) <= set(PAPER_MODULES)
    assert tp.ALIASES == {f"{r.name}:{v.name}": (r.name, v.model, v.build_kwargs())
                          for r in REGISTRIES if r.name in tp.PAPERS for v in r.variants(paper=True)}


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


@pytest.mark.parametrize("case", TIMM, ids=TIMM_IDS)
def test_timm_train_py_calls(case):
    from timm.data import resolve_data_config
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    model = _train_py_create(case.name, **case.kw)
    assert model.num_classes == case.num_classes  # train.py reads it when --num-classes is not given
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == case.name
    assert {k: cfg[k] for k in case.cfg} == dict(case.cfg)
    data = resolve_data_config({}, model=model)
    assert data == _expected_data(case)
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=5e-4, momentum=0.9)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    # same module and weights as ours
    ours = PAPER_MODULES[case.registry.name].create_model(case.name, **case.kw)
    assert type(ours) is type(model) and list(ours.state_dict()) == list(model.state_dict())
    ours.load_state_dict(model.state_dict())
    x = _x(6, size=case.size)
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
        names = [v.name for v in r.variants(paper=True)] + list(SPEC[r.name]["timm_constructors"])
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
