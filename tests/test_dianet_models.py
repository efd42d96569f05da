"""DIANet models: exactness against the official code's outputs, key compatibility, the
DIA-LSTM math re-derived by hand, initialisation, and configurations the official code
could not build."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import dianet
from common.fingerprint import det_init_, det_input, manifest, rel_err
from common.registry import UnknownModelError

DATA = os.path.join(os.path.dirname(__file__), "data", "dianet")

# fingerprint file -> named variant of dianet's table (and overrides) used by the official run
_FP_VARIANTS = {
    "dia_resnet164": ("dia_resnet164", {}),
    "dia_preresnet164": ("dia_preresnet164", {}),
    "dia_wrn52_4": ("dia_wrn52_4", {}),
    "dia_resnext101_8x32": ("dia_resnext101_8x32", {}),
    "dia_resnet29": ("dia_resnet29", {}),
    "dia_preresnet29": ("dia_preresnet29", {}),
    "dia_wrn16_4": ("dia_wrn16_4", {}),
    "dia_resnext29_8x32": ("dia_resnext29_8x32", {}),
    "dia_resnet164_c10": ("dia_resnet164", dict(num_classes=10)),
    "fc_share__dense164_c4_patched": ("fc_share__dense164", {}),
}
# fingerprint file -> (registered constructor name, constructor kwargs)
FINGERPRINTS = {fp: (dianet.get_variant(v).model, dianet.get_variant(v).build_kwargs(**over))
                for fp, (v, over) in _FP_VARIANTS.items()}


def _load(name):
    return torch.load(os.path.join(DATA, name + ".pt"), weights_only=True)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------
# Official fingerprints: keys/shapes/dtypes/order, parameter count, float64 output
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(FINGERPRINTS))
def test_fingerprint(variant):
    fp = _load(variant)
    name, kwargs = FINGERPRINTS[variant]
    model = dianet.create_model(name, **kwargs)  # float32, as when the fingerprint was made
    assert _n_params(model) == fp["num_params"]
    det_init_(model)
    model.double().eval()
    expected = [(k, tuple(s), str(d)) for k, s, d in fp["manifest"]]
    assert manifest(model) == expected
    with torch.no_grad():
        out = model(det_input(fp["input_shape"], fp["seed"]))
    assert out.dtype == torch.float64 and out.shape == fp["output"].shape
    assert rel_err(out, fp["output"]) <= 1e-10


def test_paper_parameter_counts():
    paper = {"dia_resnet164": 1_946_132, "dia_preresnet164": 1_961_364, "dia_wrn52_4": 12_298_516,
             "dia_resnext101_8x32": 33_006_020}
    assert [v.name for v in dianet.variants(paper=True)] == list(paper)
    for name, n in paper.items():
        v = dianet.get_variant(name)
        assert _n_params(dianet.create_model(v.model, **v.build_kwargs())) == n, name
        assert _n_params(dianet.create_model(name)) == n, name


def test_dia_lstm_parameter_count_formula():
    # 2 * [(C*C/4 + C/4) + (C/4*4C + 4C)] per stage
    for c, n in [(64, 10_784), (128, 42_048), (256, 166_016), (512, 659_712)]:
        cell = dianet.DIALSTMCell(c)
        assert _n_params(cell) == n == 2 * ((c * c // 4 + c // 4) + (c // 4 * 4 * c + 4 * c))


def test_official_checkpoint_layout_loads_strict(tmp_path):
    """cifar.py saves {'state_dict': DataParallel (module.-prefixed) weights, ...}."""
    from common.checkpoint import load_checkpoint, load_state_dict_strict, save_checkpoint

    src = dianet.dia_resnet(29, num_classes=100, block_name="bottleneck")
    det_init_(src)
    ckpt = {"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()},
            "acc": 1.0, "best_acc": 1.0, "optimizer": {}}
    save_checkpoint(ckpt, tmp_path / "checkpoint.pth.tar")
    dst = dianet.dia_resnet(29, num_classes=100, block_name="bottleneck")
    load_state_dict_strict(dst, load_checkpoint(tmp_path / "checkpoint.pth.tar")["state_dict"])
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


# ------------------------------------------------------------------------------------------
# The DIA-LSTM cell and stage, re-derived with explicit scalar formulas in float64
# ------------------------------------------------------------------------------------------
def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


def _mlp_scalar(z, seq):
    """W2 relu(W1 z + b1) + b2 with python floats."""
    w1, b1 = seq[0].weight.tolist(), seq[0].bias.tolist()
    w2, b2 = seq[2].weight.tolist(), seq[2].bias.tolist()
    mid = [max(0.0, sum(w * v for w, v in zip(row, z)) + b) for row, b in zip(w1, b1)]
    return [sum(w * v for w, v in zip(row, mid)) + b for row, b in zip(w2, b2)]


def _cell_scalar(a, h, c, cell):
    """One step of the modified LSTM for one sample, following the paper/code formulas."""
    C = len(a)
    gi = _mlp_scalar(a, cell.w_ih[0].seq)
    gh = _mlp_scalar(h, cell.w_hh[0].seq)
    g = [x + y for x, y in zip(gi, gh)]
    i_, f_, g_, o_ = g[:C], g[C:2 * C], g[2 * C:3 * C], g[3 * C:]
    c_new = [_sig(f_[k]) * c[k] + _sig(i_[k]) * math.tanh(g_[k]) for k in range(C)]
    h_new = [_sig(o_[k]) * _sig(c_new[k]) for k in range(C)]
    return h_new, c_new


def _randomise(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.7)


def test_cell_matches_scalar_formulas():
    torch.manual_seed(0)
    cell = dianet.DIALSTMCell(8).double()
    _randomise(cell, 1)
    a = torch.randn(3, 8, dtype=torch.float64)
    h = torch.rand(3, 8, dtype=torch.float64)
    c = torch.randn(3, 8, dtype=torch.float64)
    h_new, c_new = cell(a, (h, c))
    for b in range(3):
        hr, cr = _cell_scalar(a[b].tolist(), h[b].tolist(), c[b].tolist(), cell)
        assert torch.allclose(h_new[b], torch.tensor(hr, dtype=torch.float64), rtol=0, atol=1e-13)
        assert torch.allclose(c_new[b], torch.tensor(cr, dtype=torch.float64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("post_relu", [True, False])
def test_stage_matches_scalar_recurrence(post_relu):
    """A tiny stage (3 basic blocks of width 8): the recurrence over blocks, zero initial
    state, the mask h_t applied to the pre-attention branch, then + shortcut (+ ReLU)."""
    from dianet.models import ResBasicBlock

    torch.manual_seed(0)
    blocks = [ResBasicBlock(8, 8) for _ in range(3)]
    stage = dianet.DIAStage(blocks, channels=8, post_relu=post_relu).double().eval()
    _randomise(stage, 2)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        got = stage(x)
        ref = x.clone()
        h = [[0.0] * 8 for _ in range(2)]
        c = [[0.0] * 8 for _ in range(2)]
        for blk in blocks:
            # branch: bn2(conv2(relu(bn1(conv1 x)))) with eval-mode BN written out
            def bn(t, m):
                scale = m.weight / torch.sqrt(m.running_var + m.eps)
                return (t - m.running_mean[:, None, None]) * scale[:, None, None] + m.bias[:, None, None]
            out = torch.stack([bn(F.conv2d(r[None], blk.conv1.weight, padding=1)[0], blk.bn1) for r in ref])
            out = out.clamp_min(0)
            out = torch.stack([bn(F.conv2d(r[None], blk.conv2.weight, padding=1)[0], blk.bn2) for r in out])
            nxt = torch.empty_like(ref)
            for b in range(2):
                a = [out[b, k].sum().item() / 25.0 for k in range(8)]
                h[b], c[b] = _cell_scalar(a, h[b], c[b], stage.lstm)
                for k in range(8):
                    v = out[b, k] * h[b][k] + ref[b, k]
                    nxt[b, k] = v.clamp_min(0) if post_relu else v
            ref = nxt
    assert (got - ref).abs().max().item() < 1e-12


def test_state_is_reset_per_stage_and_not_shared():
    m = dianet.dia_resnet(20, num_classes=10)  # BasicBlock: widths 16/32/64
    cells = [m.layer1.lstm, m.layer2.lstm, m.layer3.lstm]
    assert [c.channels for c in cells] == [16, 32, 64]
    assert len({id(c) for c in cells}) == 3
    # The first block's mask is computed from a zero state: perturbing stage-1 parameters
    # must not change what stage 3 would compute on a fixed stage-3 input.
    det_init_(m)
    m.double().eval()
    x3 = det_input((2, 32, 16, 16), seed=3)
    with torch.no_grad():
        y = m.layer3(x3)
        for p in m.layer1.parameters():
            p.add_(1.0)
        assert torch.equal(y, m.layer3(x3))


# ------------------------------------------------------------------------------------------
# Configurations the official code crashes on, and other input sizes / dtypes
# ------------------------------------------------------------------------------------------
VARIANTS = [
    ("dia_resnet", dict(depth=20), (16, 32, 64), 1000),  # official default block: BasicBlock
    ("dia_resnet", dict(depth=20, num_classes=10, block_name="BasicBlock"), (16, 32, 64), 10),
    ("dia_preresnet", dict(depth=20, num_classes=10, block_name="basicblock"), (16, 32, 64), 10),
    ("dia_preresnet", dict(depth=29, num_classes=10, block_name="Bottleneck"), (64, 128, 256), 10),
    ("dia_wrn", dict(depth=10, num_classes=10), (16, 32, 64), 10),  # official default widen 1
    ("dia_wrn", dict(depth=10, num_classes=10, widen_factor=2, dropRate=0.3), (32, 64, 128), 10),
    ("dia_resnext", dict(cardinality=4, depth=11, num_classes=10, widen_factor=2), (64, 128, 256), 10),
    ("dia_resnext", dict(cardinality=2, depth=11, num_classes=10, widen_factor=1), (32, 64, 128), 10),
    ("fc_share__dense", dict(depth=20, num_classes=10, block_name="BasicBlock", c=8), (16, 32, 64), 10),
]


def _stages(model):
    for names in (("layer1", "layer2", "layer3"), ("block1", "block2", "block3"),
                  ("stage_1", "stage_2", "stage_3")):
        if hasattr(model, names[0]):
            return [getattr(model, n) for n in names]
    raise AssertionError(type(model))


@pytest.mark.parametrize("name,kwargs,widths,classes", VARIANTS)
def test_other_widths_build_and_run(name, kwargs, widths, classes):
    torch.manual_seed(0)
    model = dianet.create_model(name, **kwargs)
    for stage, w in zip(_stages(model), widths):
        if name == "fc_share__dense":
            assert stage.sharefc[0].in_features == w and stage.sharefc[2].out_features == w
        else:
            assert stage.lstm.channels == w and stage.lstm.w_hh[0].seq[0].in_features == w
    x = torch.randn(2, 3, 32, 32)
    model.train()
    out = model(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    # (with one block per stage and zero Linear biases, w_hh only ever sees h = 0, so only
    # the input transform is required to receive a non-zero gradient)
    unit_params = [p for s in _stages(model) for n, p in s.named_parameters()
                   if n.startswith(("lstm.w_ih", "sharefc"))]
    assert unit_params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in unit_params)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("variant", ["dia_resnet29", "dia_preresnet29", "dia_wrn16_4",
                                     "dia_resnext29_8x32"])
def test_64x64_input_global_pool(variant):
    name, kwargs = FINGERPRINTS[variant]
    model = dianet.create_model(name, **kwargs)
    det_init_(model)
    model.double().eval()
    x = det_input((1, 3, 64, 64), seed=1)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape[-2:] == (16, 16) and feats.shape[1] == model.num_features
    head = model.classifier if name == "dia_resnext" else model.fc
    ref = F.linear(F.avg_pool2d(feats, 16).flatten(1), head.weight, head.bias)
    assert out.shape == (1, 100) and torch.allclose(out, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zero_states_follow_input_dtype(dtype):
    model = dianet.dia_wrn(10, num_classes=10, widen_factor=1).to(dtype).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


def test_wrn_dropout_active_resnext_droprate_unused():
    torch.manual_seed(0)
    wrn = dianet.dia_wrn(10, num_classes=10, widen_factor=1, dropRate=0.5).train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    a = wrn(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, wrn(x))  # dropout draws different masks
    torch.manual_seed(0)
    r0 = dianet.dia_resnext(2, 11, 10, widen_factor=1, dropRate=0)
    torch.manual_seed(0)
    r5 = dianet.dia_resnext(2, 11, 10, widen_factor=1, dropRate=0.5)
    r0.train(), r5.train()
    assert torch.equal(r0(x), r5(x))  # official ResNeXt ignores dropRate


# ------------------------------------------------------------------------------------------
# Initialisation: same RNG draws, in the same order, as the official constructors
# ------------------------------------------------------------------------------------------
INIT_CASES = {
    "dia_resnet29": lambda: dianet.dia_resnet(29, 100, "bottleneck"),
    "dia_preresnet29": lambda: dianet.dia_preresnet(29, 100, "bottleneck"),
    "dia_wrn16_4": lambda: dianet.dia_wrn(16, 100, widen_factor=4, dropRate=0.3),
    "dia_resnext29_8x32": lambda: dianet.dia_resnext(8, 29, 100, widen_factor=4),
    "fc_share__dense29_c4": lambda: dianet.fc_share__dense(29, 100, "bottleneck", c=4),
}


@pytest.mark.parametrize("variant", sorted(INIT_CASES))
def test_init_reproduces_official_seeded_init(variant):
    ref = _load("official_init_seed0")["models"][variant]["stats"]
    torch.manual_seed(0)
    sd = INIT_CASES[variant]().state_dict()
    floats = {k: v for k, v in sd.items() if v.is_floating_point()}
    assert list(floats) == list(ref)
    for k, v in floats.items():
        v = v.double()
        s, ss, first = ref[k]
        assert math.isclose(v.sum().item(), s, rel_tol=1e-9, abs_tol=1e-9), k
        assert math.isclose(v.square().sum().item(), ss, rel_tol=1e-9, abs_tol=1e-9), k
        assert v.flatten()[0].item() == first, k


def test_init_rules_per_family():
    torch.manual_seed(0)
    res = dianet.dia_resnet(29, 100, "bottleneck")
    wrn = dianet.dia_wrn(16, 100, widen_factor=4)
    nxt = dianet.dia_resnext(8, 29, 100, widen_factor=4)
    # ResNet / PreResNet: conv ~ N(0, 2/(k*k*out)); Linear biases keep PyTorch's uniform default
    w = res.layer3.ModuleList[1].conv2.weight
    assert abs(w.std().item() / math.sqrt(2.0 / (9 * 64)) - 1) < 0.02
    assert res.layer1.lstm.w_ih[0].seq[0].bias.abs().sum() > 0 and res.fc.bias.abs().sum() > 0
    # WRN: every Linear bias zero, LSTM ones included
    assert all(m.bias.abs().sum() == 0 for m in wrn.modules() if isinstance(m, torch.nn.Linear))
    # ResNeXt: every bias zero; conv kaiming fan_out; classifier kaiming fan_in
    assert all(v.abs().sum() == 0 for k, v in nxt.state_dict().items() if k.endswith(".bias"))
    w = nxt.stage_3.ModuleList[1].conv_conv.weight  # fan_out = out_channels * 3 * 3
    assert abs(w.std().item() / math.sqrt(2.0 / (w.shape[0] * 9)) - 1) < 0.02
    assert nxt.stage_1.lstm.w_ih[0].seq[2].weight.abs().max() <= 1 / math.sqrt(32) + 1e-7


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------
def test_registry():
    assert dianet.list_models() == ["dia_preresnet", "dia_resnet", "dia_resnext", "dia_wrn",
                                    "fc_share__dense"]
    assert dianet.list_models("dia_*") == ["dia_preresnet", "dia_resnet", "dia_resnext", "dia_wrn"]
    cfg = dianet.REGISTRY.default_cfg("dia_resnext")
    assert cfg["input_size"] == (3, 32, 32) and cfg["classifier"] == "classifier"
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465) and cfg["std"] == (0.2023, 0.1994, 0.2010)
    with pytest.raises(UnknownModelError, match="dia_resnet"):
        dianet.create_model("dia_resnet50")
    with pytest.raises(ValueError):
        dianet.dia_resnet(30, block_name="bottleneck")


# ------------------------------------------------------------------------------------------
# benchmarks/throughput.py: alias resolution and one tiny in-process measurement
# ------------------------------------------------------------------------------------------
def _throughput_module():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "throughput.py")
    spec = importlib.util.spec_from_file_location("layerzoo_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_throughput_aliases_and_tiny_run():
    tp = _throughput_module()
    expected = {"dianet:dia_resnet164": 1_946_132, "dianet:dia_preresnet164": 1_961_364,
                "dianet:dia_wrn52_4": 12_298_516, "dianet:dia_resnext101_8x32": 33_006_020}
    assert {k for k in tp.ALIASES if k.startswith("dianet:")} == set(expected)
    model, desc = tp.build_model("dianet:dia_resnet164")
    assert _n_params(model) == expected["dianet:dia_resnet164"] and "depth=164" in desc
    model, _ = tp.build_model("dianet:dia_wrn", {"depth": 10, "num_classes": 7})
    assert model.fc.out_features == 7
    args = tp.parse_args(["--models", "dianet:dia_resnet", "--device", "cpu", "--steps", "1",
                          "--warmup", "1"])
    cpu = torch.device("cpu")
    rows = [tp.measure("dianet:dia_resnet", dict(depth=8, num_classes=10), 2, 32, p, cpu, args)
            for p in ("fp32", "bf16")]
    assert all(r["train_ips"] > 0 and r["eval_ips"] > 0 for r in rows)
    table = tp.markdown_table(rows, "dianet:dia_resnet", cpu, compiled=False).splitlines()
    assert len(table) == 4 and "| 1.00 | 1.00 | n/a |" in table[2]
    # anchors only apply on GPU and at the anchor's batch/size
    assert tp._anchor("dianet:dia_resnet164", "fp32", 128, 32, "train") == 917
    assert tp._anchor("dianet:dia_resnet164", "bf16", 128, 32, "eval") == 1702
    assert tp._anchor("dianet:dia_resnet164", "fp32", 64, 32, "train") is None
