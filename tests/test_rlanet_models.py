"""RLA-Net models: the official fingerprints (float64, keys / shapes / order, parameter counts), the
parameter counts of the other official builders, the recurrence re-derived by hand (the ResNet aliasing,
the one shared MobileNet recurrent conv), ``rla_channel`` honoured, ``features_only`` and odd input sizes."""
import ast
import os
import re

import pytest
import torch
import torch.nn.functional as F

import rlanet
from common.fingerprint import det_init_, det_input, manifest, rel_err
from common.flops import count_params

DATA = os.path.join(os.path.dirname(__file__), "data", "rlanet")
# <variant>.pt: the shared reference fingerprints (2 x 3 x 224 x 224); official_<variant>.pt: the official
# builders they do not cover (the ablations, ResNeXt, the baselines), made the same way by running the
# official models/ (joyfang1106/RLANet 4425663) on CPU at 1 x 3 x 64 x 64 (model.flops=True; the zero h0 in
# float64, which v2/v4/v6 need since they feed it to a BN first)
FINGERPRINTS = sorted(f[:-3] for f in os.listdir(DATA) if f.endswith(".pt") and not f.startswith("mmdet_"))


def _load(name):
    return torch.load(os.path.join(DATA, name + ".pt"), weights_only=True)


def _official_call(ctor):
    """'models.rla_resnet50_eca(rla_channel=32)' -> ('rla_resnet50_eca', {'rla_channel': 32})."""
    call = ast.parse(ctor.split("models.", 1)[1], mode="eval").body
    return call.func.id, {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if re.search(r"resnet(101|152)", n) else n
                                  for n in FINGERPRINTS])  # 101 / 152 layers: 3-5 s each on one core
def test_fingerprint(name):
    fp = _load(name)
    official, kwargs = _official_call(fp["ctor"])
    model = rlanet.create_model(official, **kwargs)  # float32, as when the fingerprint was made
    assert count_params(model) == sum(p.numel() for p in model.parameters()) == fp["num_params"]
    det_init_(model)
    model.double().eval()
    assert manifest(model) == [(k, tuple(s), d) for k, s, d in fp["manifest"]]
    with torch.no_grad():
        out = model(det_input(fp["input_shape"], fp["seed"]))
    assert out.dtype == torch.float64 and out.shape == fp["output"].shape
    assert rel_err(out, fp["output"]) <= 1e-10


def test_features_only_is_the_official_detection_backbone():
    """features_only of rla_resnet50 = the official mmdet RLA_ResNet backbone: its 406 keys (no bn2 / fc) and
    its four maps (the shared fingerprint, slimmed to every 64th channel)."""
    fp = _load("mmdet_rla_resnet50_backbone_slim")
    net = rlanet.create_model("rla_resnet50", features_only=True)
    assert count_params(net) == fp["num_params"]
    det_init_(net)
    net.double().eval()
    assert manifest(net) == [(k, tuple(s), d) for k, s, d in fp["manifest"]]
    with torch.no_grad():
        maps = net(det_input(fp["input_shape"], fp["seed"]))
    assert [tuple(m.shape[1:]) for m in maps] == [(256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4)]
    for i, m in enumerate(maps):
        assert rel_err(m[:, ::64], fp["output"][f"stage{i + 1}"]) <= 1e-10


def test_official_checkpoint_layout_loads(tmp_path):
    """train.py's checkpoint: {'epoch', 'state_dict' with 'module.' keys, 'best_acc1', 'optimizer'}; loaded
    on CPU with weights_only=True, strict, the MobileNet's five recurrent-conv keys included."""
    from common.checkpoint import load_state_dict_strict, read_state_dict

    for name in ("rla_resnet50", "dsrla_mobilenetv2"):
        torch.manual_seed(0)
        src = rlanet.create_model(name).eval()
        path = tmp_path / f"{name}_checkpoint.pth.tar"
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()},
                    "best_acc1": torch.tensor(61.2), "optimizer": {"state": {}, "param_groups": []}}, path)
        torch.manual_seed(1)
        dst = rlanet.create_model(name).eval()
        load_state_dict_strict(dst, read_state_dict(str(path)), source=str(path))
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(dst(x), src(x))


# measured with the official code: sum(p.numel() for p in model.parameters())
PARAMS = {
    "rla_resnext50_32x4d": 25_463_400, "rla_resnext50_32x4d_se": 27_978_344, "rla_resnext50_32x4d_eca": 25_463_486,
    "rla_resnext101_32x4d": 44_891_816, "rla_resnext101_32x4d_se": 49_634_984,
    "rla_resnext101_32x4d_eca": 44_891_987,
    "dsrla_mobilenetv2_k6": 3_527_240, "dsrla_mobilenetv2_k12": 3_549_608, "dsrla_mobilenetv2_k24": 3_594_344,
    "dsrla_mobilenetv2_k32": 3_624_168, "dsrla_mobilenetv2_k6_eca": 3_527_271,
    "dsrla_mobilenetv2_k12_eca": 3_549_639, "dsrla_mobilenetv2_k24_eca": 3_594_375,
    "dsrla_mobilenetv2_k32_eca": 3_624_199,
    "rla_mobilenetv2_k6": 3_527_510, "rla_mobilenetv2_k12": 3_550_796, "rla_mobilenetv2_k24": 3_599_312,
    "rla_mobilenetv2_k32": 3_633_096, "rla_mobilenetv2_k6_eca": 3_527_541, "rla_mobilenetv2_k12_eca": 3_550_827,
    "rla_mobilenetv2_k24_eca": 3_599_343, "rla_mobilenetv2_k32_eca": 3_633_127,
    "resnet50": 25_557_032, "mobilenet_v2": 3_504_872, "resnet50_k": 26_794_280,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_counts(name):
    model = rlanet.create_model(name)
    assert count_params(model) == PARAMS[name]


def test_every_official_builder_is_a_variant():
    names = set(rlanet.REGISTRY.list_variants())
    for prefix in ("rla", "dsrla"):
        for k in ("", "_k6", "_k12", "_k24", "_k32"):
            assert {f"{prefix}_mobilenetv2{k}", f"{prefix}_mobilenetv2{k}_eca"} <= names
    for d in (50, 101, 152):
        assert {f"rla_resnet{d}", f"rla_resnet{d}_eca", f"resnet{d}", f"resnet{d}_se", f"resnet{d}_eca"} <= names
    for d in (50, 101):
        assert {f"{p}resnext{d}_32x4d{s}" for p in ("", "rla_") for s in ("", "_se", "_eca")} <= names
    assert {"mobilenet_v2", "mobilenetv2_eca", "resnet50_k"} <= names
    assert sorted(rlanet.REGISTRY.list_variants(paper=True)) == sorted(n for n in names if "rla_" in n)


# ------------------------------------------------------------------------------------------
# The recurrence by hand (float64 reference loops over the model's own parameters)
# ------------------------------------------------------------------------------------------
def _bn(m, x):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def _ref_rla_resnet(model, x):
    """The official ``_forward_impl``: y is the block output after the add and the ReLU (aliasing)."""
    x = F.max_pool2d(F.relu(_bn(model.bn1, F.conv2d(x, model.conv1.weight, stride=2, padding=3))), 3, 2, 1)
    h = torch.zeros(x.shape[0], model.rla_channel, *x.shape[2:], dtype=x.dtype)
    for s, (blocks, bns) in enumerate(zip(model.stages, model.stage_bns)):
        for b, bn in zip(blocks, bns):
            idt = x if b.downsample is None else _bn(b.downsample[1], F.conv2d(x, b.downsample[0].weight,
                                                                               stride=b.stride))
            o = F.relu(_bn(b.bn1, F.conv2d(torch.cat((x, h), 1), b.conv1.weight)))
            o = F.relu(_bn(b.bn2, F.conv2d(o, b.conv2.weight, stride=b.stride, padding=1, groups=b.conv2.groups)))
            o = _bn(b.bn3, F.conv2d(o, b.conv3.weight))
            x = F.relu(o + idt)
            if b.stride != 1:
                h = F.avg_pool2d(h, 2)
            h = F.conv2d(torch.tanh(_bn(bn, h + F.conv2d(x, model.conv_outs[s].weight))),
                         model.recurrent_convs[s].weight, padding=1)
    x = torch.cat((x, F.relu(_bn(model.bn2, h))), 1).mean((2, 3))
    return F.linear(x, model.fc.weight, model.fc.bias)


def _rand_bn_(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.mark.parametrize("k", [32, 8])
def test_rla_resnet_matches_hand_loop(k):
    torch.manual_seed(0)
    model = _rand_bn_(rlanet.create_model("RLA_ResNet", layers=(2, 1, 2, 1), rla_channel=k, num_classes=7))
    model = model.double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(model(x), _ref_rla_resnet(model, x)) < 1e-12


def test_mobilenet_recurrent_conv_is_one_module_last_key_wins():
    for name, attr in (("rla_mobilenetv2", "recurrent_convs"), ("dsrla_mobilenetv2", "recurrent_dsconvs")):
        model = rlanet.create_model(name)
        convs = getattr(model, attr)
        assert len(convs) == 5 and all(c is convs[0] for c in convs)
        sd = model.state_dict()
        assert [k for k in sd if k.startswith(attr)] == [f"{attr}.{i}.weight" for i in range(5)]
        shape = (32, 32, 3, 3) if attr == "recurrent_convs" else (32, 1, 3, 3)
        assert convs[0].weight.shape == shape
        for i in range(5):
            sd[f"{attr}.{i}.weight"] = torch.full(shape, float(i))
        model.load_state_dict(sd)
        assert torch.equal(convs[2].weight, torch.full(shape, 4.0))


def test_rla_channel_honoured_everywhere():
    for name in ("rla_resnet50", "rla_resnet101_eca", "rla_resnext50_32x4d_se", "rla_mobilenetv2_k6",
                 "dsrla_mobilenetv2_eca"):
        model = rlanet.create_model(name, rla_channel=16, num_classes=10)
        sd = model.state_dict()
        assert sd["bn2.weight"].shape == (16,) and sd["stage_bns.0.0.weight"].shape == (16,)
        assert all(v.shape[0] == 16 for k, v in sd.items() if k.startswith("conv_outs."))
        head = model.get_classifier()
        assert head.out_features == 10
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert model.eval()(x).shape == (1, 10)
    r = rlanet.create_model("rla_resnet50", rla_channel=16)
    assert r.stages[0][0].conv1.weight.shape == (64, 64 + 16, 1, 1) and r.fc.in_features == 2048 + 16
    m = rlanet.create_model("rla_mobilenetv2_k12")
    assert m.stages[1][0].conv[0][0].weight.shape == (96 + 12, 1, 3, 3) and m.rla_channel == 12
    # the official builders' names for the ECA flags
    a = rlanet.create_model("rla_resnet50", k_size=[3, 3, 3, 5])
    assert a.stages[3][0].eca.conv.weight.shape == (1, 1, 5)
    assert rlanet.create_model("rla_mobilenetv2", eca=True).stages[6][0].conv[3].conv.weight.shape == (1, 1, 3)


@pytest.mark.parametrize("name", ["rla_resnet50", "dsrla_mobilenetv2_eca", "mobilenet_v2", "resnet50_eca"])
def test_features_only_and_odd_sizes(name):
    torch.manual_seed(0)
    model = rlanet.create_model(name).eval()
    feats = rlanet.create_model(name, features_only=True)
    sd = model.state_dict()
    feats.load_state_dict({k: sd[k] for k in feats.state_dict()})
    info = model.feature_info
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = feats.eval()(x)
        assert [m.shape[1] for m in maps] == [i["num_chs"] for i in info]
        assert [64 // m.shape[-1] for m in maps] == [i["reduction"] for i in info]
        for size in (67, 50):  # not a multiple of 32 (the official code fails)
            y = model(torch.randn(1, 3, size, size))
            assert y.shape == (1, 1000) and torch.isfinite(y).all()
    if name == "rla_resnet50":  # the detection backbone: the official keys minus bn2 / fc
        assert not any(re.match(r"^(bn2|fc)\.", k) for k in feats.state_dict())
        assert len(feats.state_dict()) == 406
        assert torch.equal(maps[-1], model.forward_features(x)[:, :2048])
