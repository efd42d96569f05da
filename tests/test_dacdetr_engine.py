"""DAC-DETR engine and main.py: training steps, non-finite loss, evaluation, parser, checkpoints, resume.

A tiny stand-in detector + criterion with the official call signatures keeps this fast;
the real detector is exercised in the last test when ``dacdetr.models.build_model`` exists.
"""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from dacdetr import engine
from dacdetr import main as dmain
from dacdetr.datasets import build_dataset, collate_fn, get_coco_api_from_dataset
from dacdetr.datasets.demo import build_demo_coco
from dacdetr.engine import NonFiniteLossError, evaluate, train_one_epoch


# ---------------------------------------------------------------- stand-ins
class TinyDetector(nn.Module):
    """Outputs the official eval dict keys (pred_logits over 91 classes, sigmoid cxcywh boxes)."""

    def __init__(self, num_queries=12, nan_after=None):
        super().__init__()
        self.num_queries = num_queries + 5          # "one-to-many" extra slots, as H-DETR-style models
        self.num_queries_one2one = num_queries
        self.transformer = SimpleNamespace(two_stage_num_proposals=self.num_queries)
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.sampling_offsets = nn.Linear(8, 8)
        self.head = nn.Linear(8, self.num_queries * 95)
        self.nan_after = nan_after
        self.calls = 0
        self.seen_num_queries = []

    def forward(self, samples, targets):
        if not self.training:
            assert targets is None
        self.calls += 1
        self.seen_num_queries.append(self.num_queries)
        x = self.backbone(samples.tensors).flatten(1)
        out = self.head(self.sampling_offsets(x)).view(x.shape[0], -1, 95)[:, : self.num_queries]
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out * float("nan")
        return {"pred_logits": out[..., :91], "pred_boxes": out[..., 91:].sigmoid()}


class TinyCriterion(nn.Module):
    """Fixed assignment (gt i -> query i): focal-free BCE + L1, normalised like the official code."""

    def __init__(self):
        super().__init__()
        self.weight_dict = {"loss_ce": 1.0, "loss_bbox": 5.0}
        self.balance_sizes = []

    def forward(self, outputs, targets, balance_targets):
        self.balance_sizes.append([(len(t["boxes"]), len(b["boxes"])) for t, b in zip(targets, balance_targets)])
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        onehot = torch.zeros_like(logits)
        l1 = logits.new_zeros(())
        n = 0
        for b, t in enumerate(targets):
            k = min(len(t["labels"]), logits.shape[1])
            onehot[b, torch.arange(k), t["labels"][:k]] = 1
            l1 = l1 + (boxes[b, :k] - t["boxes"][:k]).abs().sum()
            n += k
        ce = nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum") / max(n, 1)
        return {"loss_ce": ce, "loss_bbox": l1 / max(n, 1), "class_error": torch.tensor(50.0)}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_demo_engine")
    build_demo_coco(root, n_train=8, n_val=4, seed=1)
    return root


def _args(root, *extra):
    return dmain.get_args_parser().parse_args(
        ["--coco_path", str(root), "--input_scale", "0.25", "--device", "cpu", "--num_workers", "0", *extra])


def _loader(root, split="train", bs=2):
    ds = build_dataset(split, _args(root))
    return ds, torch.utils.data.DataLoader(ds, bs, shuffle=False, collate_fn=collate_fn, drop_last=split == "train")


def _postprocessors():
    from dacdetr.models.postprocess import NMSPostProcess

    return {"bbox": NMSPostProcess()}


# ---------------------------------------------------------------- engine
def test_train_one_epoch_two_steps(demo_root):
    torch.manual_seed(0)
    ds, dl = _loader(demo_root)
    dl = [b for _, b in zip(range(2), dl)]  # 2 steps
    model, crit = TinyDetector(), TinyCriterion()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, crit, dl, opt, "cpu", epoch=0, max_norm=0.1, print_freq=1)
    assert model.calls == 2
    for step in crit.balance_sizes:  # the one-to-many targets are every gt repeated 3x
        assert all(nb == 3 * n for n, nb in step)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for k in ("loss", "loss_ce", "loss_bbox", "loss_ce_unscaled", "loss_bbox_unscaled", "lr", "grad_norm",
              "class_error"):
        assert k in stats and math.isfinite(stats[k])
    assert stats["loss"] == pytest.approx(stats["loss_ce"] + stats["loss_bbox"])
    assert stats["loss_bbox"] == pytest.approx(5 * stats["loss_bbox_unscaled"])
    assert stats["lr"] == pytest.approx(1e-3)


def test_grad_clip_and_reported_norm(demo_root):
    torch.manual_seed(0)
    _, dl = _loader(demo_root)
    batch = [next(iter(dl))]
    model, crit = TinyDetector(), TinyCriterion()
    seen = {}

    class SpyOpt(torch.optim.SGD):
        def step(self, closure=None):
            seen["norm"] = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
            return super().step(closure)

    stats = train_one_epoch(model, crit, batch, SpyOpt(model.parameters(), lr=0.0), "cpu", 0, max_norm=0.1)
    assert stats["grad_norm"] > 0.1  # the pre-clip norm is logged ...
    assert seen["norm"] == pytest.approx(0.1, rel=1e-4)  # ... and the step sees the clipped gradient


def test_nan_loss_stops_with_step(demo_root):
    torch.manual_seed(0)
    _, dl = _loader(demo_root)
    dl = [b for _, b in zip(range(3), dl)]
    model, crit = TinyDetector(nan_after=1), TinyCriterion()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 4, step 1/3") as e:
        train_one_epoch(model, crit, dl, opt, "cpu", epoch=4)
    assert "loss_ce" in str(e.value)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied


def test_evaluate_without_ddp(demo_root):
    torch.manual_seed(0)
    ds, dl = _loader(demo_root, "val")
    model, crit = TinyDetector(), TinyCriterion()
    stats, ev = evaluate(model, crit, _postprocessors(), dl, get_coco_api_from_dataset(ds), "cpu")
    assert len(stats["coco_eval_bbox"]) == 12 and 0.0 <= stats["coco_eval_bbox"][0] <= 1.0
    assert "loss" in stats and math.isfinite(stats["loss"])
    assert all(nb == 2 * n for step in crit.balance_sizes for n, nb in step)  # eval balance_num = 2
    assert set(model.seen_num_queries) == {12}          # one-to-one queries during eval
    assert model.num_queries == 17 and model.transformer.two_stage_num_proposals == 17  # restored
    assert sorted(ev.img_ids) == sorted(ds.ids)


# ---------------------------------------------------------------- main.py
def test_parser_official_defaults():
    a = dmain.get_args_parser().parse_args([])
    expect = dict(lr=2e-4, lr_backbone_names=["backbone.0"], lr_backbone=2e-5,
                  lr_linear_proj_names=["reference_points", "sampling_offsets"], lr_linear_proj_mult=0.1,
                  batch_size=2, weight_decay=1e-4, epochs=50, lr_drop=40, clip_max_norm=0.1, sgd=False,
                  with_box_refine=False, two_stage=False, backbone="resnet50", num_feature_levels=4,
                  enc_layers=6, dec_layers=6, dim_feedforward=2048, hidden_dim=256, dropout=0.1, nheads=8,
                  num_queries_one2one=300, num_queries_one2many=0, dec_n_points=4, enc_n_points=4,
                  mixed_selection=False, look_forward_twice=False, aux_loss=True, set_cost_class=2,
                  set_cost_bbox=5, set_cost_giou=2, cls_loss_coef=1, bbox_loss_coef=5, giou_loss_coef=2,
                  focal_alpha=0.25, dataset_file="coco", coco_path="./data/coco", output_dir="", device="cuda",
                  seed=42, resume="", start_epoch=0, num_workers=2, eval=False, topk=300, use_fp16=False,
                  drop_path_rate=0.2, pretrained_backbone_path="./swin_tiny_patch4_window7_224.pkl",
                  position_embedding="sine", input_scale=1.0)
    for k, v in expect.items():
        assert getattr(a, k) == v, k
    assert a.position_embedding_scale == pytest.approx(2 * math.pi)
    assert dmain.get_args_parser().parse_args(["--no_aux_loss"]).aux_loss is False
    assert dmain.get_args_parser().parse_args(["--local-rank", "3"]).local_rank == 3


def test_device_fallback():
    if torch.cuda.is_available():
        assert dmain.resolve_device("cuda") == "cuda"
    else:
        with pytest.warns(UserWarning, match="CUDA is not available"):
            assert dmain.resolve_device("cuda") == "cpu"
    assert dmain.resolve_device("cpu") == "cpu"


def test_param_groups():
    m = nn.Module()
    m.backbone = nn.ModuleList([nn.Linear(2, 2)])
    m.sampling_offsets = nn.Linear(2, 2)
    m.head = nn.Linear(2, 2)
    frozen = nn.Linear(2, 2)
    frozen.requires_grad_(False)
    m.frozen = frozen
    g = dmain.build_param_groups(m, dmain.get_args_parser().parse_args([]))
    assert [len(x["params"]) for x in g] == [2, 2, 2]
    assert [x["lr"] for x in g] == pytest.approx([2e-4, 2e-5, 2e-5])
    assert g[1]["params"][0] is m.backbone[0].weight and g[2]["params"][0] is m.sampling_offsets.weight


def _patch_model(monkeypatch, nan_after=None):
    made = []

    def build(args):
        torch.manual_seed(0)
        m = TinyDetector(nan_after=nan_after)
        made.append(m)
        return m, TinyCriterion(), _postprocessors()

    monkeypatch.setattr(dmain, "build_model", build)
    return made


def test_main_checkpoints_log_and_resume(demo_root, tmp_path, monkeypatch, capsys):
    made = _patch_model(monkeypatch)
    out = tmp_path / "out"
    dmain.main(_args(demo_root, "--output_dir", str(out), "--epochs", "1", "--lr_drop", "1"))
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert set(ck) == {"model", "optimizer", "lr_scheduler", "epoch", "args"}
    assert ck["epoch"] == 0 and ck["args"]["epochs"] == 1  # args: a plain dict (weights_only=True loads it)
    assert (out / "checkpoint0000.pth").exists() and (out / "eval" / "latest.pth").exists()
    assert (out / "last_checkpoint").read_text().strip() == "checkpoint.pth"
    assert (out / "eval" / "000.pth").exists()  # epoch % 50 == 0
    assert ck["lr_scheduler"]["last_epoch"] == 1 and ck["lr_scheduler"]["step_size"] == 1
    assert [len(g["params"]) for g in ck["optimizer"]["param_groups"]] == [2, 2, 2]
    for k, v in made[0].state_dict().items():
        assert torch.equal(ck["model"][k], v)
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0]
    assert len(log[0]["test_coco_eval_bbox"]) == 12 and "train_loss" in log[0] and "test_loss" in log[0]
    assert log[0]["n_parameters"] == sum(p.numel() for p in made[0].parameters())
    out_text = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in out_text
    assert "number of params: " in out_text and "Start training" in out_text
    from common.config import read_yaml

    flags = read_yaml(out / "config.yaml")  # the resolved flags of the run
    assert flags["epochs"] == 1 and flags["lr_drop"] == 1 and flags["output_dir"] == str(out)

    # resume: weights + optimizer restored, the epoch counter continues at 1, lr follows the new flags
    args = _args(demo_root, "--output_dir", str(out), "--epochs", "2", "--lr_drop", "1",
                 "--resume", str(out / "checkpoint.pth"))
    dmain.main(args)
    assert args.start_epoch == 1
    resumed = made[1]
    ck1 = torch.load(out / "checkpoint0001.pth", weights_only=True)
    assert ck1["epoch"] == 1 and ck1["lr_scheduler"]["last_epoch"] == 2
    assert ck1["optimizer"]["param_groups"][0]["lr"] == pytest.approx(2e-4 * 0.01)
    assert [r["epoch"] for r in map(json.loads, (out / "log.txt").read_text().splitlines())] == [0, 1]
    # the resumed run evaluated the loaded weights first (no training between load and first eval)
    assert resumed.seen_num_queries[0] == 12

    # --eval --resume: evaluation only, eval.pth written, no new checkpoint
    dmain.main(_args(demo_root, "--output_dir", str(out), "--eval", "--resume", str(out / "checkpoint0001.pth")))
    assert (out / "eval.pth").exists() and not (out / "checkpoint0002.pth").exists()
    for k, v in made[2].state_dict().items():
        assert torch.equal(ck1["model"][k], v)

    # weights alone (no optimizer state): loaded, evaluated once before training as officially, epoch 0 next
    torch.save({"model": ck1["model"]}, out / "weights.pth")
    args = _args(demo_root, "--output_dir", str(tmp_path / "w"), "--epochs", "1", "--resume", str(out / "weights.pth"))
    dmain.main(args)
    assert args.start_epoch == 0 and made[3].seen_num_queries[0] == 12
    from common.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "w" / "checkpoint.pth")["epoch"] == 0


def test_main_nan_keeps_last_good_checkpoint(demo_root, tmp_path, monkeypatch, capsys):
    # 8 train images / batch 2 = 4 steps + 2 val batches per epoch: NaN appears in epoch 1
    _patch_model(monkeypatch, nan_after=4 + 2 + 1)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        dmain.main(_args(demo_root, "--output_dir", str(out), "--epochs", "3"))
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "epoch 1, step 1/4" in err and "checkpoint.pth" in err
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 0
    assert not (out / "checkpoint0001.pth").exists()


def test_cli_missing_coco_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        dmain.cli(["--coco_path", str(tmp_path / "missing"), "--device", "cpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing") in err and "python -m dacdetr.datasets.demo" in err
    assert "annotations/instances_val2017.json" in err


def test_resume_missing_file_is_an_error(demo_root, tmp_path, monkeypatch):
    _patch_model(monkeypatch)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        dmain.main(_args(demo_root, "--resume", str(tmp_path / "nothere.pth"), "--epochs", "0"))


@pytest.mark.slow
def test_main_two_processes_gloo(demo_root, tmp_path):
    """torchrun with 2 CPU processes: DDP + DistributedSampler + gathered COCO evaluation (~25 s)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    from common.distributed import free_port

    port = free_port()
    driver = Path(__file__).parent / "data" / "dacdetr" / "ddp_driver.py"
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
           str(driver), "--coco_path", str(demo_root), "--input_scale", "0.25", "--num_workers", "0",
           "--output_dir", str(out), "--epochs", "1", "--print_freq", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Training time" in r.stdout and "IoU metric: bbox" in r.stdout
    # 8 images / 2 ranks / batch 2 = 2 steps per rank
    assert "[1/2]" in r.stdout and "[2/2]" not in r.stdout
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(log) == 1 and len(log[0]["test_coco_eval_bbox"]) == 12  # written once (rank 0)
    ck = torch.load(out / "checkpoint0000.pth", weights_only=True)
    assert not any(k.startswith("module.") for k in ck["model"])


def test_real_detector_two_steps_and_eval(demo_root):
    """The real DAC-DETR (small widths, frozen random ResNet-50) through train_one_epoch + evaluate."""
    pytest.importorskip("dacdetr.models.deformable_detr")
    args = _args(demo_root, "--with_box_refine", "--two_stage", "--mixed_selection", "--look_forward_twice",
                 "--dropout", "0.0", "--input_scale", "0.1", "--num_queries_one2one", "30", "--enc_layers", "1",
                 "--dec_layers", "2", "--hidden_dim", "64", "--dim_feedforward", "128", "--lr_backbone", "0")
    torch.manual_seed(0)
    model, crit, post = dmain.build_model(args)
    ds = build_dataset("train", args)
    dl = [collate_fn([ds[i], ds[i + 1]]) for i in (0, 2)]
    opt = torch.optim.AdamW(dmain.build_param_groups(model, args), lr=args.lr, weight_decay=args.weight_decay)
    head = model.class_embed[0].weight.detach().clone()
    stats = train_one_epoch(model, crit, dl, opt, "cpu", 0, args.clip_max_norm)
    assert math.isfinite(stats["loss"]) and stats["loss"] > 0
    assert {"loss_ce", "loss_bbox_one2one", "loss_ce_dn", "loss_giou_enc"} <= set(stats)
    assert not torch.equal(head, model.class_embed[0].weight)
    vds = build_dataset("val", args)
    vdl = torch.utils.data.DataLoader(torch.utils.data.Subset(vds, [0, 1]), 2, collate_fn=collate_fn)
    n_before = model.num_queries
    vstats, ev = evaluate(model, crit, post, vdl, get_coco_api_from_dataset(vds), "cpu")
    assert len(vstats["coco_eval_bbox"]) == 12 and model.num_queries == n_before
    assert sorted(ev.img_ids) == vds.ids[:2]
