"""DAC-DETR model: faithfulness to the official code, structure, training forward, CDN, pieces.

``tests/data/dacdetr/r50_deformplus_cdn_ice_ep12_slim.pt`` holds the official model's state-dict
manifest, parameter counts and its float64 eval outputs for ``det_input((2, 3, 256, 320), 0)``
with ``det_init_`` weights (decoder outputs sliced to the first 50 queries, encoder outputs to
the first 200 tokens, anchors complete, the NMS post-process to its top 20 per image).
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointMismatchError, load_state_dict_strict
from common.fingerprint import det_init_, det_input, manifest, rel_err
from dacdetr.main import get_args_parser
from dacdetr.models.deformable_detr import build
from dacdetr.models.dn_components import dn_post_process, prepare_for_cdn
from dacdetr.models.ms_deform_attn import MSDeformAttn
from dacdetr.models.position_encoding import PositionEmbeddingSine
from dacdetr.util.misc import NestedTensor, inverse_sigmoid, nested_tensor_from_tensor_list

DATA = os.path.join(os.path.dirname(__file__), "data", "dacdetr", "r50_deformplus_cdn_ice_ep12_slim.pt")
EP12_FLAGS = ["--with_box_refine", "--two_stage", "--dim_feedforward", "2048", "--num_queries_one2one", "900",
              "--epochs", "12", "--lr_drop", "11", "--dropout", "0.0", "--mixed_selection",
              "--look_forward_twice", "--device", "cpu"]
TINY_FLAGS = ["--with_box_refine", "--two_stage", "--dropout", "0.0", "--mixed_selection", "--look_forward_twice",
              "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries_one2one", "20",
              "--device", "cpu"]
MAIN_KEYS = ("pred_logits", "pred_boxes", "pred_logits_cdecoder", "pred_boxes_cdecoder")


def _args(flags, *extra):
    return get_args_parser().parse_args(list(flags) + list(extra))


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA, weights_only=True)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build(_args(TINY_FLAGS))
    det_init_(model)
    return model


def _tiny_targets():
    return [
        {"labels": torch.tensor([3, 17]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.2]])},
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
    ]


def _flatten(out):
    flat = {k: out[k] for k in MAIN_KEYS}
    for i, aux in enumerate(out["aux_outputs"]):
        for k, v in aux.items():
            flat[f"aux_outputs.{i}.{k}"] = v
    for k, v in out["enc_outputs"].items():
        flat[f"enc_outputs.{k}"] = v
    return flat


# ---------------------------------------------------------------------------------------- official
def test_r50_manifest_and_param_counts(reference):
    model = build(_args(EP12_FLAGS))
    ours = [(k, s) for k, s, _ in manifest(model)]
    assert len(ours) == 632
    assert ours == [(k, s) for k, s, _ in reference["manifest"]]
    assert all(d == "torch.float32" for _, _, d in manifest(model))
    assert sum(p.numel() for p in model.parameters()) == reference["num_params"] == 47_739_225
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 47_516_825
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad) == 222_400
    assert all(n.startswith("backbone.0.body.conv1") or n.startswith("backbone.0.body.layer1") for n in frozen)
    # the decoder's heads are the top-level heads (saved twice in a state dict)
    assert model.transformer.decoder.class_embed is model.class_embed
    assert model.transformer.decoder.bbox_embed is model.bbox_embed
    # FrozenBatchNorm2d: buffers only, no num_batches_tracked
    assert not any(k.endswith("num_batches_tracked") for k, _ in ours)


def test_swin_large_window12_param_count():
    args = _args(EP12_FLAGS, "--backbone", "swin_large_window12", "--pretrained_backbone_path",
                 os.path.join(os.path.dirname(__file__), "no_such_file.pth"))
    with torch.device("meta"):
        model = build(args)
    assert sum(p.numel() for p in model.parameters()) == 218_076_109
    assert sum(p.numel() for p in model.backbone.parameters()) == 195_200_820
    sd = model.state_dict()
    idx = sd["backbone.0.body.layers.0.blocks.0.attn.relative_position_index"]
    assert tuple(idx.shape) == (144, 144) and idx.dtype == torch.int64
    assert tuple(sd["backbone.0.body.layers.0.blocks.0.attn.relative_position_bias_table"].shape) == (529, 6)
    assert [tuple(sd[f"input_proj.{i}.0.weight"].shape)[1] for i in range(4)] == [384, 768, 1536, 1536]
    assert "backbone.0.body.layers.2.downsample.reduction.weight" in sd
    assert "backbone.0.body.layers.3.downsample.reduction.weight" not in sd
    assert [k for k in sd if k.startswith("backbone.0.body.norm")] == [
        f"backbone.0.body.norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]


@pytest.mark.slow
def test_r50_fingerprint_float64(reference):
    """The official eval forward, reproduced to 1e-10 (float32 islands included)."""
    model = build(_args(EP12_FLAGS))
    model.eval()
    det_init_(model)
    model.double()
    assert manifest(model) == reference["manifest"]
    x = det_input(reference["input_shape"], reference["seed"])
    with torch.no_grad():
        out = model(x, None)
    flat = _flatten(out)
    nq = reference["slices"]["decoder_queries"]
    nt = reference["slices"]["encoder_tokens"]
    assert set(reference["output"]) <= set(flat)
    assert out["enc_outputs"]["pred_logits_cdecoder"] is out["enc_outputs"]["pred_logits"]
    for key, expected in reference["output"].items():
        got = flat[key]
        if key == "enc_outputs.anchors":
            assert got.dtype == torch.float32
            assert torch.equal(got, expected), key
            continue
        assert got.dtype == torch.float64, key
        got = got[:, :nt] if key.startswith("enc_outputs.") else got[:, :nq]
        assert got.shape == expected.shape, key
        assert rel_err(got, expected) <= 1e-10, (key, rel_err(got, expected))
    assert out["pred_logits"].shape == (2, 900, 91) and out["enc_outputs"]["pred_logits"].shape == (2, 1700, 91)
    assert len(out["aux_outputs"]) == 5

    from dacdetr.models.postprocess import NMSPostProcess

    sizes = torch.tensor([[256, 320], [256, 320]])
    results = NMSPostProcess()(out, sizes)
    top = reference["slices"]["postprocess_top"]
    for b, res in enumerate(results):
        assert res["scores"].shape[0] == 300
        assert torch.equal(res["labels"][:top], reference["postprocess"][f"post.{b}.labels"])
        assert rel_err(res["scores"][:top], reference["postprocess"][f"post.{b}.scores"]) <= 1e-10
        assert rel_err(res["boxes"][:top], reference["postprocess"][f"post.{b}.boxes"]) <= 1e-10


# ---------------------------------------------------------------------------------------- tiny model
def test_tiny_eval_outputs_and_cdecoder_layer0(tiny_model):
    model = tiny_model.eval()
    x = det_input((2, 3, 64, 96), 1).float()
    with torch.no_grad():
        out = model(x, None)
    assert set(out) == {*MAIN_KEYS, "aux_outputs", "enc_outputs"}
    assert out["pred_logits"].shape == (2, 20, 91) and out["pred_boxes"].shape == (2, 20, 4)
    assert len(out["aux_outputs"]) == 1 and set(out["aux_outputs"][0]) == set(MAIN_KEYS)
    # levels 8x12, 4x6, 2x3, 1x2 -> 128 encoder tokens
    enc = out["enc_outputs"]
    assert enc["pred_logits"].shape == (2, 128, 91) and enc["anchors"].shape == (2, 128, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    # C-decoder layer 0 consumes the O-decoder's self-attended queries: identical layer-0 outputs
    aux0 = out["aux_outputs"][0]
    assert torch.equal(aux0["pred_logits"], aux0["pred_logits_cdecoder"])
    assert torch.equal(aux0["pred_boxes"], aux0["pred_boxes_cdecoder"])
    # ... but not afterwards (the C-decoder has no self-attention in layer 1)
    assert not torch.allclose(out["pred_logits"], out["pred_logits_cdecoder"])
    # anchors: centre of the first cell of level 0 and its 0.05 size, in sigmoid space
    assert torch.allclose(enc["anchors"][0, 0], torch.tensor([0.5 / 12, 0.5 / 8, 0.05, 0.05]))


def test_tiny_eval_rejects_targets(tiny_model):
    model = tiny_model.eval()
    with pytest.raises(ValueError):
        model(torch.zeros(1, 3, 64, 96), _tiny_targets())


def test_tiny_train_forward_with_empty_image(tiny_model):
    model = tiny_model.train()
    torch.manual_seed(3)
    x = det_input((2, 3, 64, 96), 2).float()
    out = model(x, _tiny_targets())
    assert {"dn_meta", "dn_meta_cdecoder"} <= set(out)
    meta = out["dn_meta"]
    # 2 boxes max -> 200 // 4 = 50 groups, each 2 positive + 2 negative slots
    assert meta["num_dn_group"] == 50 and meta["pad_size"] == 200
    assert out["pred_logits"].shape == (2, 20, 91) and out["pred_logits_cdecoder"].shape == (2, 20, 91)
    known = meta["output_known_lbs_bboxes"]
    assert known["pred_logits"].shape == (2, 200, 91) and known["pred_boxes"].shape == (2, 200, 4)
    assert len(known["aux_outputs"]) == 1 and set(known["aux_outputs"][0]) == {"pred_logits", "pred_boxes"}
    known_c = out["dn_meta_cdecoder"]["output_known_lbs_bboxes"]
    assert set(known_c) == {"pred_logits_cdecoder", "pred_boxes_cdecoder", "aux_outputs"}
    loss = sum(v.float().sum() for v in (out["pred_logits"], out["pred_boxes_cdecoder"],
                                          known["pred_logits"], out["enc_outputs"]["pred_logits"]))
    loss.backward()
    assert model.label_enc.weight.grad is not None and model.label_enc.weight.grad.abs().sum() > 0
    assert model.query_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("backbone.0.body.layer1"))
    model.zero_grad(set_to_none=True)
    model.eval()


def test_tiny_train_forward_without_any_box_matches_eval(tiny_model):
    """No boxes in the batch -> no dn slots; with dropout 0 the training forward must equal the eval
    forward (the official code fed un-sigmoided references to the layer-0 head in this case)."""
    model = tiny_model
    x = det_input((2, 3, 64, 96), 4).float()
    empty = [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)} for _ in range(2)]
    model.train()
    with torch.no_grad():
        out_train = model(x, empty)
    model.eval()
    with torch.no_grad():
        out_eval = model(x, None)
    assert out_train["dn_meta"]["pad_size"] == 0
    assert "output_known_lbs_bboxes" not in out_train["dn_meta"]
    for k, v in _flatten(out_eval).items():
        assert torch.allclose(_flatten(out_train)[k], v, rtol=1e-5, atol=1e-6), k


def test_padded_batch_runs(tiny_model):
    model = tiny_model.eval()
    imgs = [det_input((3, 64, 96), 5).float(), det_input((3, 48, 64), 6).float()]
    samples = nested_tensor_from_tensor_list(imgs)
    assert samples.tensors.shape == (2, 3, 64, 96)
    assert samples.mask[1, 48:, :].all() and samples.mask[1, :48, 64:].all() and not samples.mask[1, :48, :64].any()
    with torch.no_grad():
        out = model(samples, None)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()
    anchors = out["enc_outputs"]["anchors"]
    # image 1 is valid on 6 of 8 rows and 8 of 12 columns of level 0: padded tokens get anchor 1.0
    assert torch.equal(anchors[1, 95], torch.ones(4))
    assert torch.allclose(anchors[1, 0, :2], torch.tensor([0.5 / 8, 0.5 / 6]))


def test_state_dict_with_module_prefix_loads_strictly(tiny_model):
    sd = {"module." + k: v.clone() for k, v in tiny_model.state_dict().items()}
    fresh = build(_args(TINY_FLAGS))
    load_state_dict_strict(fresh, sd)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    sd.pop("module.label_enc.weight")
    with pytest.raises(CheckpointMismatchError):
        load_state_dict_strict(fresh, sd)


def test_use_checkpoint_same_values_and_grads():
    torch.manual_seed(0)
    plain = build(_args(TINY_FLAGS))
    det_init_(plain)
    ckpt = build(_args(TINY_FLAGS, "--use_checkpoint"))
    ckpt.load_state_dict(plain.state_dict())
    x = det_input((1, 3, 64, 64), 7).float()
    outs = []
    for m in (plain, ckpt):
        m.eval()
        out = m(x, None)
        (out["pred_logits"].sum() + out["pred_boxes_cdecoder"].sum()).backward()
        outs.append((out["pred_logits"].detach(), m.transformer.encoder.layers[0].linear1.weight.grad.clone()))
    assert torch.allclose(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
    assert torch.allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-7)


def test_build_model_returns_criterion_and_nms():
    from dacdetr.models import build_model

    model, criterion, post = build_model(_args(TINY_FLAGS))
    assert isinstance(model, torch.nn.Module) and isinstance(criterion, torch.nn.Module)
    assert type(post["bbox"]).__name__ == "NMSPostProcess"


def test_unsupported_configs_fail_clearly():
    with pytest.raises(NotImplementedError):
        build(_args([f for f in TINY_FLAGS if f != "--two_stage"]))
    with pytest.raises(NotImplementedError):
        build(_args(TINY_FLAGS, "--backbone", "swin_huge"))


# ---------------------------------------------------------------------------------------- pieces
def test_prepare_for_cdn_layout_noise_and_mask():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(92, 8)
    targets = [
        {"labels": torch.tensor([1, 2, 3]),
         "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])},
        {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.4, 0.5, 0.2, 0.2]])},
    ]
    label, bbox, mask, meta, meta_c = prepare_for_cdn((targets, 100, 0.0, 0.4), True, 5, 91, 8, emb)
    groups = 200 // 6
    assert meta == meta_c == {"pad_size": 6 * groups, "num_dn_group": groups}
    pad = 6 * groups
    assert label.shape == (2, pad, 8) and bbox.shape == (2, pad, 4) and mask.shape == (pad + 5, pad + 5)
    # no label noise: slot (b, i * 3 + j) holds the embedding of label j of image b
    assert torch.equal(label[0, 3 + 1], emb.weight[2]) and torch.equal(label[1, 6 * 7 + 0], emb.weight[4])
    assert (label[1, 1:3] == 0).all() and (bbox[1, 1:3] == 0).all()      # unused slots stay zero
    for b, t in enumerate(targets):
        gt = t["boxes"]
        n = gt.shape[0]
        gxyxy = torch.cat([gt[:, :2] - gt[:, 2:] / 2, gt[:, :2] + gt[:, 2:] / 2], -1)
        half = torch.cat([gt[:, 2:] / 2, gt[:, 2:] / 2], -1)
        for copy_ in range(2 * groups):
            noisy = bbox[b, copy_ * 3: copy_ * 3 + n].sigmoid()
            nxyxy = torch.cat([noisy[:, :2] - noisy[:, 2:] / 2, noisy[:, :2] + noisy[:, 2:] / 2], -1)
            ratio = ((nxyxy - gxyxy).abs() / (half * 0.4))
            inside = (nxyxy > 1e-4) & (nxyxy < 1 - 1e-4)                  # not clamped
            if copy_ % 2 == 0:      # positives: corners move by less than 0.4 half-size
                assert (ratio[inside] <= 1 + 1e-3).all()
            else:                   # negatives: between 1 and 2 times
                assert (ratio[inside] >= 1 - 1e-3).all() and (ratio[inside] <= 2 + 1e-3).all()
    # attention: matching queries never see dn slots, dn groups never see each other
    assert mask[pad:, :pad].all() and not mask[pad:, pad:].any() and not mask[:pad, pad:].any()
    for g in range(groups):
        lo, hi = 6 * g, 6 * (g + 1)
        assert not mask[lo:hi, lo:hi].any()
        assert mask[lo:hi, :lo].all() and mask[lo:hi, hi:pad].all()


def test_prepare_for_cdn_label_noise_rate_and_eval():
    torch.manual_seed(1)
    emb = torch.nn.Embedding(92, 4)
    targets = [{"labels": torch.full((1,), 90), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    label, _, _, meta, _ = prepare_for_cdn((targets, 100, 0.5, 0.4), True, 3, 91, 4, emb)
    assert meta["num_dn_group"] == 100
    changed = (label[0] != emb.weight[90]).any(-1).float().mean().item()
    assert 0.15 < changed < 0.35          # about 0.25 * 90/91 of the labels are replaced
    assert prepare_for_cdn(None, False, 3, 91, 4, emb) == (None, None, None, None, None)


def test_dn_post_process_split():
    cls = torch.arange(3 * 2 * 7 * 1, dtype=torch.float).view(3, 2, 7, 1)
    box = cls.repeat(1, 1, 1, 4)
    c, b, known = dn_post_process(cls, box, {"pad_size": 4}, True,
                                  lambda a, bb: [{"pred_logits": x} for x in a[:-1]], ca=False)
    assert torch.equal(c, cls[:, :, 4:]) and torch.equal(b, box[:, :, 4:])
    assert torch.equal(known["pred_logits"], cls[-1, :, :4]) and len(known["aux_outputs"]) == 2
    c2, _, none = dn_post_process(cls, box, {"pad_size": 0}, True, None)
    assert none is None and c2 is cls


def _bilinear(value_map, x, y):
    """value_map (C, H, W); (x, y) normalised; zero outside; pixel centres at (i + 0.5) / size."""
    _, h, w = value_map.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value_map.shape[0], dtype=value_map.dtype)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= xi < w and 0 <= yi < h:
            out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * value_map[:, yi, xi]
    return out


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_msdeformattn_against_naive_loop(ref_dim):
    torch.manual_seed(0)
    d, levels, heads, points = 16, 2, 2, 3
    attn = MSDeformAttn(d, levels, heads, points).double()
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    shapes = torch.tensor([[4, 5], [2, 3]])
    start = torch.tensor([0, 20])
    src = torch.randn(1, 26, d, dtype=torch.float64)
    query = torch.randn(1, 3, d, dtype=torch.float64)
    pad = torch.zeros(1, 26, dtype=torch.bool)
    pad[0, 3] = True
    ref = torch.rand(1, 3, levels, ref_dim, dtype=torch.float64) * 0.8 + 0.1
    out = attn(query, ref, src, shapes, start, pad)

    value = attn.value_proj(src).masked_fill(pad[..., None], 0).view(26, heads, d // heads)
    off = attn.sampling_offsets(query)[0].view(3, heads, levels, points, 2)
    w = attn.attention_weights(query)[0].view(3, heads, levels * points).softmax(-1).view(3, heads, levels, points)
    expected = torch.zeros(3, d, dtype=torch.float64)
    for q in range(3):
        for m in range(heads):
            acc = torch.zeros(d // heads, dtype=torch.float64)
            for lvl in range(levels):
                h, wd = shapes[lvl].tolist()
                vmap = value[start[lvl]:start[lvl] + h * wd, m].t().reshape(-1, h, wd)
                for p in range(points):
                    r = ref[0, q, lvl]
                    if ref_dim == 2:
                        x = r[0] + off[q, m, lvl, p, 0] / wd
                        y = r[1] + off[q, m, lvl, p, 1] / h
                    else:
                        x = r[0] + off[q, m, lvl, p, 0] / points * r[2] * 0.5
                        y = r[1] + off[q, m, lvl, p, 1] / points * r[3] * 0.5
                    acc += w[q, m, lvl, p] * _bilinear(vmap, x.item(), y.item())
            expected[q, m * (d // heads):(m + 1) * (d // heads)] = acc
    expected = attn.output_proj(expected)
    assert rel_err(out[0], expected) < 1e-12


def test_msdeformattn_init_star():
    attn = MSDeformAttn(256, 4, 8, 4)
    bias = attn.sampling_offsets.bias.view(8, 4, 4, 2)
    assert torch.allclose(bias[0, 0, :, :], torch.tensor([[1.0, 0.0], [2, 0], [3, 0], [4, 0]]))
    assert torch.allclose(bias[1, 2, 1], torch.tensor([2.0, 2.0]))          # 45 degrees, scaled to max 1
    assert torch.allclose(bias[6, 0, 0], torch.tensor([0.0, -1.0]), atol=1e-6)
    assert (attn.sampling_offsets.weight == 0).all() and (attn.attention_weights.weight == 0).all()


def test_position_embedding_sine_hand_computed():
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[:, :, 3] = True                       # last column padded
    pe = PositionEmbeddingSine(4, normalize=True)
    x = torch.zeros(1, 2, 3, 4, dtype=torch.float64)
    pos = pe(NestedTensor(x, mask))
    assert pos.dtype == torch.float32 and pos.shape == (1, 8, 3, 4)
    row, col = 2, 1
    y = (row + 1 - 0.5) / (3 + 1e-6) * 2 * math.pi
    xx = (col + 1 - 0.5) / (3 + 1e-6) * 2 * math.pi
    freqs = [1.0, 1.0, 100.0, 100.0]           # 10000 ** (2 * (i // 2) / 4)
    expect_y = [math.sin(y / freqs[0]), math.cos(y / freqs[1]), math.sin(y / freqs[2]), math.cos(y / freqs[3])]
    expect_x = [math.sin(xx / freqs[0]), math.cos(xx / freqs[1]), math.sin(xx / freqs[2]), math.cos(xx / freqs[3])]
    assert torch.allclose(pos[0, :, row, col].double(), torch.tensor(expect_y + expect_x, dtype=torch.float64),
                          atol=1e-6)


def test_inverse_sigmoid_and_nested_tensor():
    x = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5], dtype=torch.float64)
    got = inverse_sigmoid(x)
    assert torch.allclose(got[1:3], torch.logit(x[1:3]))
    assert got[0].item() == pytest.approx(math.log(1e-5)) and got[4].item() == pytest.approx(-math.log(1e-5))
    nt = nested_tensor_from_tensor_list(torch.ones(2, 3, 4, 5))
    assert not nt.mask.any() and nt.tensors.shape == (2, 3, 4, 5)


def test_frozen_bn_formula_and_swin_shapes():
    from dacdetr.models.backbone import FrozenBatchNorm2d
    from dacdetr.models.swin import SwinTransformer

    bn = FrozenBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        bn.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    x = torch.randn(2, 3, 4, 4)
    ref = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, 1e-5)
    assert torch.allclose(bn(x), ref, atol=1e-6)
    bn.load_state_dict({**bn.state_dict(), "num_batches_tracked": torch.tensor(5)})

    torch.manual_seed(0)
    swin = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7,
                           out_indices=(1, 2, 3), drop_path_rate=0.0).eval()
    feats = swin(torch.randn(1, 3, 70, 90))   # not a multiple of the patch, window or 2
    assert list(feats) == ["1", "2", "3"]
    assert [tuple(f.shape) for f in feats.values()] == [(1, 64, 9, 12), (1, 128, 5, 6), (1, 256, 3, 3)]
    # shifted windows only talk inside their region: the mask has exactly 0 and -100
    mask = swin.layers[0]._shift_mask(14, 14, torch.device("cpu"))
    assert set(mask.unique().tolist()) == {0.0, -100.0} and mask.shape == (4, 49, 49)
    assert (mask[0] == 0).all()


def test_pretrained_backbone_files_are_read_when_present(tmp_path):
    import torchvision

    from dacdetr.models.swin import SwinTransformer, load_swin_pretrained

    # ResNet: an ImageNet-style file (with classifier and BN counters) is read from disk
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-test.pth"
    torch.save(net.state_dict(), path)
    model = build(_args(TINY_FLAGS, "--pretrained_backbone_path", str(path)))
    body = model.backbone[0].body
    assert torch.equal(body.layer3[1].conv2.weight, net.layer3[1].conv2.weight)
    assert torch.equal(body.bn1.running_var, net.bn1.running_var)

    # Swin: classification checkpoint under "model", other window size -> bias tables resized
    src = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
    state = {k: v for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(10, 256)
    path = tmp_path / "swin.pth"
    torch.save({"model": state}, path)
    dst = SwinTransformer(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=12,
                          out_indices=(1, 2, 3))
    result = load_swin_pretrained(dst, str(path))
    assert "head.weight" in result.unexpected_keys
    assert torch.equal(dst.layers[1].blocks[0].mlp.fc1.weight, src.layers[1].blocks[0].mlp.fc1.weight)
    table = dst.layers[0].blocks[0].attn.relative_position_bias_table
    assert table.shape == (23 * 23, 1)
    assert dst.layers[0].blocks[0].attn.relative_position_index.max() == 23 * 23 - 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_model_on_cuda_matches_cpu(tiny_model):
    model = tiny_model.eval()
    x = det_input((2, 3, 64, 96), 8).float()
    with torch.no_grad():
        cpu = model(x, None)
        model.cuda()
        gpu = model(x.cuda(), None)
    try:
        assert rel_err(gpu["pred_boxes"].cpu(), cpu["pred_boxes"]) < 1e-4
        model.train()
        out = model(x.cuda(), [{k: v.cuda() for k, v in t.items()} for t in _tiny_targets()])
        out["pred_logits"].sum().backward()
        assert out["dn_meta"]["output_known_lbs_bboxes"]["pred_boxes"].is_cuda
    finally:
        model.zero_grad(set_to_none=True)
        model.cpu().eval()
