"""The step core (common.train.step) against hand-written float64 reference steps; top-k accuracy."""
import copy
import math

import pytest
import torch
import torch.nn as nn

from common import engine
from common.train.step import AmpConfig, NonFiniteLossError, StepResult, TrainStep, unwrap_model


def _mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _batch(n, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def _close(a, b, tol):
    return all(torch.allclose(x, y, rtol=0, atol=tol) for x, y in zip(a.parameters(), b.parameters()))


def test_one_update_equals_the_reference_step():
    model, ref = _mlp(), _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.05)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1, weight_decay=0.05)
    step = TrainStep(model, opt, clip_grad=0.3)
    for i in range(3):
        x, y = _batch(8, seed=i)
        ref_opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.3)
        ref_opt.step()
        with step.forward(i, 3, epoch=0):
            loss = nn.functional.mse_loss(model(x), y)
        out = step.backward(loss)
        assert isinstance(out, StepResult) and out.updated
        assert abs(out.grad_norm.item() - ref_norm.item()) < 1e-12
    assert ref_norm.item() > 0.3  # clipping was active
    assert _close(model, ref, 1e-12) and step.num_updates == 3
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True) after the update


def test_accumulating_two_halves_equals_the_full_batch():
    model, ref = _mlp(), _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    full = [_batch(8, seed=s) for s in (3, 4)]
    halves = [(x[a:b], y[a:b]) for x, y in full for a, b in ((0, 4), (4, 8))]
    for x, y in full:
        ref_opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
    step = TrainStep(model, opt, accum_steps=2)
    updated = []
    for i, (x, y) in enumerate(halves):
        with step.forward(i, len(halves)):
            loss = nn.functional.mse_loss(model(x), y)
        updated.append(step.backward(loss).updated)
    assert updated == [False, True, False, True] and step.num_updates == 2
    assert _close(model, ref, 1e-10)


def test_short_last_window_is_averaged_over_its_own_size():
    # 3 micro-batches with accum_steps=2: windows {0, 1} and {2}; the last one is a plain step.
    model, ref = _mlp(), _mlp()
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.3) for m in (model, ref))
    x, y = _batch(6, seed=5)
    parts = [(x[0:2], y[0:2]), (x[2:4], y[2:4]), (x[4:6], y[4:6])]
    ref_opt.zero_grad()
    nn.functional.mse_loss(ref(x[0:4]), y[0:4]).backward()
    ref_opt.step()
    ref_opt.zero_grad()
    nn.functional.mse_loss(ref(x[4:6]), y[4:6]).backward()
    ref_opt.step()
    step = TrainStep(model, opt, accum_steps=2)
    for i, (xb, yb) in enumerate(parts):
        with step.forward(i, 3):
            loss = nn.functional.mse_loss(model(xb), yb)
        step.backward(loss)
    assert step.num_updates == 2 and _close(model, ref, 1e-12)
    with pytest.raises(ValueError, match="n_steps"):
        with step.forward(0):
            pass


def test_grad_scaler_unscales_before_clipping():
    # A power-of-two scale is exact: the scaled step equals the unscaled float32 reference bit for bit.
    model, ref = _mlp(dtype=torch.float32), _mlp(dtype=torch.float32)
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, ref))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    step = TrainStep(model, opt, scaler=scaler, clip_grad=0.05)
    x, y = _batch(8, dtype=torch.float32)
    ref_opt.zero_grad()
    nn.functional.mse_loss(ref(x), y).backward()
    ref_norm = nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    ref_opt.step()
    with step.forward():
        loss = nn.functional.mse_loss(model(x), y)
    out = step.backward(loss)
    assert out.grad_norm.item() == pytest.approx(ref_norm.item(), rel=1e-6)
    assert _close(model, ref, 1e-7) and scaler.get_scale() == 1024.0


def test_nan_in_an_accumulation_window_stops_before_the_update():
    model = _mlp()
    before = copy.deepcopy(model)
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), accum_steps=2)
    x, y = _batch(4)
    x[0, 0] = float("nan")
    with step.forward(0, 2, epoch=7):
        loss = nn.functional.mse_loss(model(x), y)
    assert not step.backward(loss).updated  # no decision inside the window: no host sync
    with step.forward(1, 2, epoch=7):
        loss = nn.functional.mse_loss(model(x[1:]), y[1:])
    with pytest.raises(NonFiniteLossError, match=r"epoch 7, step 1/2 \(micro-batches 0-1") as e:
        step.backward(loss, detail="extra words")
    assert "nan" in str(e.value) and str(e.value).endswith("extra words")
    assert _close(model, before, 0.0) and step.num_updates == 0
    # the next window starts from zeroed gradients, not the poisoned ones
    x, y = _batch(4, seed=9)
    ref = copy.deepcopy(before)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    nn.functional.mse_loss(ref(x), y).backward()
    ref_opt.step()
    for i in range(2):
        with step.forward(i, 2, epoch=8):
            loss = nn.functional.mse_loss(model(x[2 * i: 2 * i + 2]), y[2 * i: 2 * i + 2])
        step.backward(loss)
    assert _close(model, ref, 1e-12)


def test_reduced_value_decides():
    model = _mlp()
    step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _batch(4)
    with step.forward(3, 5, epoch=1):
        loss = nn.functional.mse_loss(model(x), y)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(inf\) at epoch 1, step 3/5;"):
        step.backward(loss, reduced=float("inf"))  # the caller's reduced value wins over the finite local loss


def test_ema_and_scheduler_hooks_run_after_each_update():
    from timm.utils import ModelEmaV3

    model = _mlp()
    ddp_like = nn.DataParallel(model)  # hooks see the bare model
    ema = ModelEmaV3(model, decay=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: 1.0 / (n + 1))

    class TimmStyle:
        seen = []

        def step_update(self, num_updates, metric=None):
            self.seen.append(num_updates)

    snaps, calls = [], []

    def hook(n):
        calls.append(n)
        snaps.append([p.detach().clone() for p in model.parameters()])

    step = TrainStep(ddp_like, opt, ema=ema, scheduler=sched, hooks=[hook])
    timm_step = TrainStep(_mlp(), torch.optim.SGD(_mlp().parameters(), lr=0.1), scheduler=TimmStyle())
    for i in range(2):
        x, y = _batch(4, seed=i)
        with step.forward(i, 2):
            loss = nn.functional.mse_loss(ddp_like(x), y)
        step.backward(loss)
        with timm_step.forward(i, 2):
            loss = nn.functional.mse_loss(timm_step.model(x), y)
        timm_step.backward(loss)
    assert calls == [1, 2] and TimmStyle.seen == [1, 2]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.4 / 3)
    # ModelEmaV3 with step=1 copies, then averages with decay 0.5
    for e, a, b in zip(ema.module.parameters(), *snaps):
        assert torch.allclose(e, 0.5 * a + 0.5 * b, rtol=0, atol=1e-12)
    assert unwrap_model(ddp_like) is model


def test_one_error_class_for_the_project():
    import dacdetr.engine as dengine

    assert dengine.NonFiniteLossError is NonFiniteLossError is engine.NonFiniteLossError
    assert engine.AmpConfig is AmpConfig and engine.TrainStep is TrainStep


# ---------------------------------------------------------------- accuracy
def _loop_topk(output, target, k):
    hits = 0
    for row, t in zip(output.tolist(), target.tolist()):
        if isinstance(t, list):  # soft target: its most probable class
            t = max(range(len(t)), key=lambda j: t[j])
        order = sorted(range(len(row)), key=lambda j: -row[j])
        hits += t in order[:k]
    return 100.0 * hits / len(row and target)


@pytest.mark.parametrize("soft", [False, True])
def test_accuracy_any_topk_hard_and_soft_targets(soft):
    g = torch.Generator().manual_seed(0)
    out = torch.randn(29, 6, generator=g)
    hard = torch.randint(0, 6, (29,), generator=g)
    target = hard
    if soft:  # mixup-style: two one-hots mixed 0.7 / 0.3 (argmax = the 0.7 class)
        other = torch.randint(0, 6, (29,), generator=g)
        target = 0.7 * nn.functional.one_hot(hard, 6).float() + 0.3 * nn.functional.one_hot(other, 6).float()
    topk = (3, 1, 6, 20)
    got = engine.accuracy(out, target, topk)
    for k, v in zip(topk, got):
        assert v.dtype == torch.float32 and v.shape == ()
        assert math.isclose(v.item(), _loop_topk(out, target, min(k, 6)), rel_tol=1e-6), k
    assert got[2].item() == pytest.approx(100.0) and got[3].item() == pytest.approx(100.0)  # k >= classes
    assert [a.item() for a in engine.accuracy(out[:0], target[:0], (1, 5))] == [0.0, 0.0]


def test_classification_loop_accumulation_and_soft_targets():
    # common.engine.train_one_epoch: 2 half batches with accum_steps=2 == the full batch; metrics over images.
    from common.distributed import DistEnv

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(6, 3, 2, 2, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0, 1])
    soft = nn.functional.one_hot(y, 4).double()
    runs = {}
    for name, loader, accum in (("full", [(x, soft)], 1), ("halves", [(x[:3], soft[:3]), (x[3:], soft[3:])], 2)):
        m = net()
        stats = engine.train_one_epoch(m, loader, nn.CrossEntropyLoss(), torch.optim.SGD(m.parameters(), lr=0.5),
                                       DistEnv(), AmpConfig(), accum_steps=accum, log=lambda *a: None,
                                       print_freq=0, topk=(1, 2))
        runs[name] = (m, stats)
    (a, sa), (b, sb) = runs["full"], runs["halves"]
    assert _close(a, b, 1e-10)
    assert sa["count"] == sb["count"] == 6 and abs(sa["loss"] - sb["loss"]) < 1e-12
    assert sa["top1"] == sb["top1"] and sa["top2"] == sb["top2"] and set(sa) == {"loss", "top1", "top2", "count"}
