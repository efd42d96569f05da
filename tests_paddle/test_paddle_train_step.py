"""One training step, PyTorch vs Paddle, from the same weights and batch with identical denoising
queries: every loss term and the gradients of named parameters."""
import numpy as np
import paddle
import pytest
import torch

import dacdetr.models.deformable_detr as torch_detr
from conftest import build_pair, rel
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


def test_one_training_step_losses_and_grads(monkeypatch):
    tm, tc, _, pm, pc, _ = build_pair(seed=0)
    for m in (tm, tc, pm, pc):
        m.train()
    rng = np.random.RandomState(0)
    images = rng.randn(2, 3, 64, 80).astype(np.float32)
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
    errors = {}
    for k, v in t_losses.items():
        a, b = float(v.detach()), float(p_losses[k])
        errors[k] = abs(a - b) / abs(a) if abs(a) > 1e-8 else abs(a - b)
    assert max(errors.values()) <= 1e-4, {k: e for k, e in errors.items() if e > 1e-4}
    t_total, p_total = torch_total(t_losses, tc.weight_dict), paddle_total(p_losses, pc.weight_dict)
    assert abs(float(t_total.detach()) - float(p_total)) <= 1e-4 * abs(float(t_total.detach()))

    t_total.backward()
    p_total.backward()
    t_params, p_params = dict(tm.named_parameters()), dict(pm.named_parameters())
    grad_errors = {}
    for name in GRAD_PARAMS:
        tg = t_params[name].grad.numpy()
        pg = p_params[name].grad.numpy()
        if rule_for(name) == "transpose":  # Paddle Linear weights are the transpose (by name, not shape)
            pg = pg.T
        grad_errors[name] = rel(tg, pg)
        assert np.abs(tg).max() > 0, name
    assert max(grad_errors.values()) <= 1e-4, grad_errors
    print("loss max rel", max(errors.values()), "grad max rel", max(grad_errors.values()))


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
