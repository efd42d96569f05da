"""One training step, PyTorch vs Paddle, from the same weights and batch with identical denoising
queries: every loss term and the gradients of named parameters."""
import numpy as np
import paddle
import pytest
import torch

import dacdetr.models.deformable_detr as torch_detr
from conftest import SMALL_FLAGS, build_pair, jitter_, parse, rel
from dacdetr.models.criterion import weighted_total as torch_total
from dacdetr.paddle.convert import rule_for
from dacdetr.paddle.criterion import ia_bce_loss, weighted_total as paddle_total

GRAD_PARAMS = [
    "transformer.level_embed",
    "transformer.enc_output.weight",
    "transformer.encoder.layers.0.self_attn.value_proj.weight",
    "transformer.encoder.layers.1.linear1.weight",
    "transformer.decoder.layers.0.self_attn.in_proj_weight",
    "transformer.decoder.layers.1.cross_attn.sampling_offsets.weight",
    "transformer.decoder.bbox_embed.0.layers.0.weight",
    "transformer.decoder.class_embed.2.bias",
    "transformer.pos_trans.weight",
    "query_embed.weight",
    "label_enc.weight",
    "input_proj.3.0.weight",
    "backbone.0.body.layer4.2.conv3.weight",
]


def _targets():
    return [
        {"labels": torch.tensor([3, 7, 1]),
         "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.6, 0.7]])},
        {"labels": torch.tensor([5]), "boxes": torch.tensor([[0.45, 0.55, 0.4, 0.5]])},
    ]


def _dn_as_paddle(captured, label_enc_weight):
    """The denoising queries PyTorch drew, for the Paddle model: labels recovered from their embeddings."""
    label_embed, boxes_unact, attn_mask, meta, _ = captured
    emb = label_embed.detach()
    dist = ((emb[..., None, :] - label_enc_weight.detach()) ** 2).sum(-1)
    labels = dist.argmin(-1)
    empty = (emb == 0).all(-1)
    labels[empty] = -1
    assert float(dist.min(-1).values[~empty].max()) < 1e-12
    return {"labels": paddle.to_tensor(labels.numpy()), "boxes_unact": paddle.to_tensor(boxes_unact.numpy()),
            "attn_mask": paddle.to_tensor(attn_mask.numpy()), "meta": dict(meta)}


def _training_step(tm, tc, pm, pc, images, monkeypatch):
    """Forward, criterion and backward of the weighted total on both sides, the Paddle model fed the
    denoising queries PyTorch drew. Returns (torch losses, paddle losses, torch total, paddle total)."""
    for m in (tm, tc, pm, pc):
        m.train()
    targets = _targets()
    captured = {}
    original = torch_detr.prepare_for_cdn

    def capture(*args, **kwargs):
        captured["dn"] = original(*args, **kwargs)
        return captured["dn"]

    monkeypatch.setattr(torch_detr, "prepare_for_cdn", capture)
    t_out = tm(torch.from_numpy(images), targets)
    balance = [{k: v.repeat(3, *([1] * (v.dim() - 1))) for k, v in t.items()} for t in targets]
    t_losses = tc(t_out, targets, balance)

    dn = _dn_as_paddle(captured["dn"], tm.label_enc.weight)
    assert dn["meta"]["pad_size"] == 2 * 3 * dn["meta"]["num_dn_group"]
    p_targets = [{k: paddle.to_tensor(v.numpy()) for k, v in t.items()} for t in targets]
    p_out = pm(paddle.to_tensor(images), p_targets, dn=dn)
    p_losses = pc(p_out, p_targets, [{k: paddle.concat([v] * 3) for k, v in t.items()} for t in p_targets])
    assert set(t_losses) == set(p_losses)
    assert len(t_losses) == 33  # 2 decoder layers: final + 1 aux, each o2m / o2o / dn / dn_o2o, + encoder
    t_total, p_total = torch_total(t_losses, tc.weight_dict), paddle_total(p_losses, pc.weight_dict)
    t_total.backward()
    p_total.backward()
    return t_losses, p_losses, float(t_total.detach()), float(p_total)


def _loss_errors(t_losses, p_losses):
    errors = {}
    for k, v in t_losses.items():
        a, b = float(v.detach()), float(p_losses[k])
        errors[k] = abs(a - b) / abs(a) if abs(a) > 1e-8 else abs(a - b)
    return errors


def _grad_error(name, t_param, p_param):
    tg = t_param.grad.numpy()
    pg = p_param.grad.numpy()
    if rule_for(name) == "transpose":  # Paddle Linear weights are the transpose (by name, not shape)
        pg = pg.T
    return rel(tg, pg)


def test_one_training_step_losses_and_grads(monkeypatch):
    """float32: every loss term and the gradients of 13 named parameters."""
    tm, tc, _, pm, pc, _ = build_pair(seed=0)
    images = np.random.RandomState(0).randn(2, 3, 64, 80).astype(np.float32)
    t_losses, p_losses, t_total, p_total = _training_step(tm, tc, pm, pc, images, monkeypatch)
    errors = _loss_errors(t_losses, p_losses)
    assert max(errors.values()) <= 1e-4, {k: e for k, e in errors.items() if e > 1e-4}
    assert abs(t_total - p_total) <= 1e-4 * abs(t_total)
    t_params, p_params = dict(tm.named_parameters()), dict(pm.named_parameters())
    grad_errors = {}
    for name in GRAD_PARAMS:
        assert np.abs(t_params[name].grad.numpy()).max() > 0, name
        grad_errors[name] = _grad_error(name, t_params[name], p_params[name])
    assert max(grad_errors.values()) <= 1e-4, grad_errors
    print("float32 loss max rel", max(errors.values()), "grad max rel", max(grad_errors.values()))


@pytest.fixture(scope="module")
def paddle_float64():
    """One Paddle model + criterion in float64, reloaded with each seed's weights (load_into sets every
    parameter and buffer)."""
    from dacdetr.paddle import build_model as paddle_build

    pm, pc, _ = paddle_build(parse(SMALL_FLAGS))
    pm.to(dtype="float64")
    return pm, pc


# In float32 these seeds each put one element on opposite sides of a kink in the two frameworks (the
# pre-activation or sampling coordinate lies within float32 rounding of the kink), which changes one
# local sub-gradient: seed 1 a ReLU of the backbone's last block (pre-activation 1.2e-3 against
# activations up to 7e3), seed 7 a ReLU of a decoder FFN (-7.9e-7 vs +6.0e-7), seed 10 a bilinear sample
# exactly on the zero-padding border of the smallest level (x = 2.0 vs 1.9999998) and a ReLU of the box
# head (-7.5e-9 vs +7.5e-9). In float64 nothing is that close to a kink, so every gradient must agree.
@pytest.mark.parametrize("seed", [1, 7, 10])
def test_training_step_float64_every_gradient(seed, paddle_float64, monkeypatch):
    from dacdetr.models import build_model as torch_build
    from dacdetr.paddle.convert import load_into, torch_to_paddle

    pm, pc = paddle_float64
    pm.clear_gradients()
    torch.manual_seed(seed)
    tm, tc, _ = torch_build(parse(SMALL_FLAGS))
    jitter_(tm, seed)
    tm.double()
    load_into(pm, torch_to_paddle(tm.state_dict()))
    images = np.random.RandomState(seed).randn(2, 3, 64, 80)
    t_losses, p_losses, t_total, p_total = _training_step(tm, tc, pm, pc, images, monkeypatch)
    assert t_losses["loss_ce"].dtype == torch.float64 and p_losses["loss_ce"].dtype == paddle.float64
    errors = _loss_errors(t_losses, p_losses)
    # bounded by the steps the official model keeps in float32 (sine tables, proposals): ~2e-8
    assert max(errors.values()) <= 1e-6, {k: e for k, e in errors.items() if e > 1e-6}
    p_params = dict(pm.named_parameters())
    grad_errors = {}
    for name, t_param in tm.named_parameters():
        if t_param.grad is None:
            assert p_params[name].grad is None or not p_params[name].grad.numpy().any(), name
            continue
        if not t_param.grad.any():
            continue
        grad_errors[name] = _grad_error(name, t_param, p_params[name])
    trainable = [n for n, t in tm.named_parameters() if t.requires_grad]
    assert sorted(grad_errors) == sorted(trainable), set(trainable) ^ set(grad_errors)
    worst = max(grad_errors, key=grad_errors.get)
    assert grad_errors[worst] <= 1e-6, (worst, grad_errors[worst])
    print(f"float64 seed {seed}: loss max rel {max(errors.values()):.1e}, {len(grad_errors)} gradients, "
          f"max rel {grad_errors[worst]:.1e} ({worst})")


def test_ia_bce_against_hand_formula():
    """IA-BCE on a 1 x 2 x 3 example, against the formula written out element by element in float64."""
    logits = np.array([[[0.3, -1.2, 2.0], [-0.4, 0.8, -2.5]]])
    boxes_src = np.array([[0.5, 0.5, 0.4, 0.4]])
    boxes_tgt = np.array([[0.55, 0.5, 0.4, 0.3]])
    loss, weight = ia_bce_loss(paddle.to_tensor(logits), (np.array([0]), np.array([1]), np.array([2])),
                               paddle.to_tensor(boxes_src), paddle.to_tensor(boxes_tgt), None, 2.0)
    # IoU of the two boxes: overlap x 0.35 (0.35..0.7), y 0.3 (0.35..0.65) -> 0.105 / (0.16 + 0.12 - 0.105)
    iou = 0.105 / (0.16 + 0.12 - 0.105)
    expected = 0.0
    for q in range(2):
        for c in range(3):
            p = 1 / (1 + np.exp(-logits[0, q, c]))
            if (q, c) == (1, 2):
                t = max(p ** 0.25 * iou ** 0.75, 0.01)
                expected += -t * np.log(p) - (1 - t) * np.log(1 - p)
            else:
                expected += -(p ** 2) * np.log(1 - p)
    assert weight == 1
    assert abs(float(loss) - expected / 2.0) <= 1e-12


def test_subgradients_at_kinks_agree():
    """Given the same input exactly on a kink, both frameworks take the same sub-gradient: bilinear
    sampling at integer pixel coordinates and on the zero-padding border, ReLU / abs at 0, maximum /
    minimum at ties, and the port's clamp at its bounds. (The float32 step differences above come from
    inputs that land on opposite sides of a kink, not from a different convention.)"""
    from dacdetr.paddle.ops import clamp

    rng = np.random.RandomState(0)
    value = rng.randn(1, 2, 3, 4)
    px = np.array([-1.0, -0.5, 0.0, 1.0, 2.0, 3.0, 3.5, 4.0, 1.5, -1.5])  # pixel x; width 4
    py = np.array([0.0, 1.0, 2.0, -1.0, 3.0, 1.0, 0.5, 2.0, 2.5, 1.0])  # pixel y; height 3
    grid = np.stack([(px + 0.5) / 4 * 2 - 1, (py + 0.5) / 3 * 2 - 1], -1).reshape(1, 1, -1, 2)
    tv, tg = torch.tensor(value, requires_grad=True), torch.tensor(grid, requires_grad=True)
    torch.nn.functional.grid_sample(tv, tg, mode="bilinear", padding_mode="zeros", align_corners=False).sum().backward()
    pv, pg = paddle.to_tensor(value, stop_gradient=False), paddle.to_tensor(grid, stop_gradient=False)
    paddle.nn.functional.grid_sample(pv, pg, mode="bilinear", padding_mode="zeros", align_corners=False).sum().backward()
    np.testing.assert_allclose(pg.grad.numpy(), tg.grad.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(pv.grad.numpy(), tv.grad.numpy(), rtol=0, atol=1e-12)
    assert tg.grad[0, 0, 4].abs().sum() == 0 and tg.grad[0, 0, 0, 0] != 0  # outside: 0; on x = -1: one-sided

    x = np.array([0.0, 1.0, -1.0, 0.5, 2.0])
    other = np.array([0.0, 1.0, 0.0, 0.5, 1.0])
    tx, px_ = torch.tensor(x, requires_grad=True), paddle.to_tensor(x, stop_gradient=False)
    to, po = torch.tensor(other), paddle.to_tensor(other)
    terms_t = [torch.relu(tx), tx.abs(), torch.maximum(tx, to), torch.minimum(tx, to), tx.clamp(0.0, 1.0)]
    terms_p = [paddle.nn.functional.relu(px_), px_.abs(), paddle.maximum(px_, po), paddle.minimum(px_, po),
               clamp(px_, 0.0, 1.0)]
    for i, (a, b) in enumerate(zip(terms_t, terms_p)):
        ga = torch.autograd.grad(a.sum(), tx)[0].numpy()
        (gb,) = paddle.grad(b.sum(), px_)
        np.testing.assert_array_equal(gb.numpy(), ga, err_msg=f"term {i}")
