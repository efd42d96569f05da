"""``python -m dacdetr.paddle.main``: train, save, resume, evaluate (12 COCO numbers), bad input -> exit 2."""
import json
import math
import warnings

import numpy as np
import paddle
import pytest
import torch

from dacdetr.datasets.demo import build_demo_coco
from dacdetr.paddle import data as pdata
from dacdetr.paddle import main as pmain

TINY = ("--device cpu --with_box_refine --two_stage --mixed_selection --look_forward_twice --dropout 0.0 "
        "--input_scale 0.16 --num_queries_one2one 20 --enc_layers 1 --dec_layers 1 --hidden_dim 64 --nheads 4 "
        "--dim_feedforward 64 --lr_backbone 0 --batch_size 4 --print_freq 1 --pretrained_backbone_path none").split()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("paddle_demo")
    build_demo_coco(root, n_train=4, n_val=2, seed=1)
    return root


def _summary_numbers(text):
    lines = [ln for ln in text.splitlines() if ln.startswith(" Average ")]
    return [float(ln.rsplit("=", 1)[1]) for ln in lines]


@pytest.mark.slow
def test_train_save_resume_and_eval(demo, tmp_path, capsys):
    out = tmp_path / "out"
    flags = TINY + ["--coco_path", str(demo), "--output_dir", str(out), "--lr_drop", "1"]
    pmain.cli(flags + ["--epochs", "1"])
    ckpt = out / "checkpoint.safetensors"
    assert ckpt.is_file() and (out / "checkpoint0000.safetensors").is_file()
    assert len(_summary_numbers(capsys.readouterr().out)) == 12
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert log[0]["epoch"] == 0 and len(log[0]["test_coco_eval_bbox"]) == 12
    assert {"test_loss", "test_loss_ce", "test_loss_ce_unscaled", "test_class_error"} <= set(log[0])

    model_state, opt_state, meta = pmain.load_checkpoint(ckpt)
    assert meta["epoch"] == 0 and meta["lr_scheduler"]["last_epoch"] == 1
    assert opt_state and any(isinstance(v, paddle.Tensor) for v in opt_state.values())
    assert "@transformer.level_embed_moment1_0" in opt_state  # structured names, not generated ones

    # resume: continues at epoch 1 with the decayed learning rate (StepLR, lr_drop 1)
    pmain.cli(flags + ["--epochs", "2", "--resume", str(ckpt)])
    text = capsys.readouterr().out
    assert "Epoch: [1] [0]" in text and "lr: 0.000020" in text
    assert text.index(" Average ") < text.index("Epoch: [1] [0]")  # the resumed weights evaluated first
    assert (out / "checkpoint0001.safetensors").is_file()

    # --eval --resume prints the 12-number summary of the saved weights
    pmain.cli(TINY + ["--coco_path", str(demo), "--eval", "--resume", str(ckpt)])
    numbers = _summary_numbers(capsys.readouterr().out)
    assert len(numbers) == 12 and all(-1 <= x <= 1 for x in numbers)


def test_eval_from_a_pytorch_checkpoint(demo, tmp_path, capsys):
    """A PyTorch DAC-DETR checkpoint ({"model": state_dict}) is read safely and converted on the fly."""
    from dacdetr.main import get_args_parser
    from dacdetr.models import build_model

    model, _, _ = build_model(get_args_parser().parse_args(TINY))
    path = tmp_path / "torch_ckpt.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    pmain.cli(TINY + ["--coco_path", str(demo), "--eval", "--resume", str(path)])
    text = capsys.readouterr().out
    assert len(_summary_numbers(text)) == 12
    assert "Missing Keys" not in text
    assert "Averaged stats: loss: " in text and " loss_giou_enc_unscaled: " in text


@pytest.mark.parametrize("bad", ["missing.safetensors", "garbage.safetensors"])
def test_bad_checkpoint_exits_2(demo, tmp_path, capsys, bad):
    path = tmp_path / bad
    if bad.startswith("garbage"):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as e:
        pmain.cli(TINY + ["--coco_path", str(demo), "--eval", "--resume", str(path)])
    assert e.value.code == 2
    assert str(path) in capsys.readouterr().err


def test_missing_coco_root_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        pmain.cli(TINY + ["--coco_path", str(tmp_path / "nope"), "--eval"])
    assert e.value.code == 2
    assert "nope" in capsys.readouterr().err


def test_param_groups_follow_the_official_names():
    from dacdetr.main import get_args_parser
    from dacdetr.paddle import build_model

    args = get_args_parser().parse_args(TINY[:-4] + ["--lr_backbone", "2e-5", "--pretrained_backbone_path", "none"])
    model, _, _ = build_model(args)
    groups = pmain.build_param_groups(model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    assert [g["learning_rate"] for g in groups] == [1.0, pytest.approx(0.1), 0.1]
    assert all("backbone.0" in names[id(p)] for p in groups[1]["params"])
    assert all("sampling_offsets" in names[id(p)] for p in groups[2]["params"])
    # backbone stem and layer1 stay frozen
    assert not any("layer1" in names[id(p)] or "body.conv1" in names[id(p)] for g in groups for p in g["params"])


def test_eval_logs_the_criterion_losses_as_pytorch(demo):
    """The evaluation pass logs the criterion's losses under the PyTorch engine's names, with the same
    values on the same weights (torch ``dacdetr.engine.evaluate`` vs the Paddle ``evaluate``)."""
    from torch.utils.data import DataLoader

    from conftest import jitter_
    from dacdetr.datasets import build_dataset, collate_fn, get_coco_api_from_dataset
    from dacdetr.engine import evaluate as torch_evaluate
    from dacdetr.main import get_args_parser
    from dacdetr.models import build_model as torch_build
    from dacdetr.paddle import build_model as paddle_build
    from dacdetr.paddle.convert import load_into, torch_to_paddle

    args = get_args_parser().parse_args(TINY + ["--coco_path", str(demo)])
    torch.manual_seed(0)
    tm, tc, tpost = torch_build(args)
    jitter_(tm, 0)
    pm, pc, ppost = paddle_build(args)
    load_into(pm, torch_to_paddle(tm.state_dict()))
    ds = build_dataset("val", args)
    base_ds = get_coco_api_from_dataset(ds)
    loader = DataLoader(ds, args.batch_size, shuffle=False, collate_fn=collate_fn)
    t_stats, _ = torch_evaluate(tm, tc, tpost, loader, base_ds, "cpu", print_freq=100)
    p_ds = pdata.build("val", args)  # the Paddle side reads the images with its own (NumPy) pipeline
    p_stats, _ = pmain.evaluate(pm, pc, ppost, p_ds, p_ds.coco, args.batch_size, print_freq=100)

    assert set(p_stats) == set(t_stats)
    weighted = [k for k in tc.weight_dict if f"{k}_unscaled" in t_stats]
    assert {"loss", "class_error", "loss_ce", "loss_bbox_one2one", "loss_giou_enc", "loss_ce_unscaled",
            "cardinality_error_unscaled", "loss_bbox_dn_unscaled"} <= set(p_stats)
    assert len(weighted) == 15 and all(k in p_stats for k in weighted)  # 1 layer: o2m, o2o, dn, dn_o2o, enc
    assert p_stats["loss_bbox_dn_unscaled"] == 0.0  # eval mode: no denoising queries
    for k, v in t_stats.items():
        if k == "coco_eval_bbox":
            np.testing.assert_allclose(p_stats[k], v, atol=1e-6)
        else:
            assert abs(p_stats[k] - v) <= 1e-4 * max(abs(v), 1e-3), (k, v, p_stats[k])
    total = sum(t_stats[f"{k}_unscaled"] * tc.weight_dict[k] for k in weighted)
    assert abs(p_stats["loss"] - total) <= 1e-4 * abs(total)


def test_use_fp16_on_cpu_exits_2(demo, tmp_path, capsys):
    """Paddle's auto_cast has no effect on the CPU: training with --use_fp16 there is refused clearly."""
    with pytest.raises(SystemExit) as e:
        pmain.cli(TINY + ["--coco_path", str(demo), "--output_dir", str(tmp_path / "out"), "--use_fp16"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --use_fp16") and "GPU" in err
    assert not (tmp_path / "out" / "checkpoint.safetensors").exists()


def _scaler_enabled_on_cpu(scale):
    """A ``paddle.amp.GradScaler`` switched on although the place is the CPU (Paddle 3.3.1 turns it off
    there, with a warning): the attributes its constructor sets when enabled. Its ops (scale,
    check_finite_and_unscale, update_loss_scaling) have CPU kernels, so the update path can be checked."""
    from collections import defaultdict

    from paddle.amp.grad_scaler import _refresh_optimizer_state

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaler = paddle.amp.GradScaler(init_loss_scaling=scale)
    flag = lambda: paddle.to_tensor(np.array([0]).astype(np.bool_))  # noqa: E731
    scaler.__dict__.update(
        _enable=True, _use_dynamic_loss_scaling=True, _init_loss_scaling=scale, _incr_ratio=2.0, _decr_ratio=0.5,
        _incr_every_n_steps=2000, _decr_every_n_nan_or_inf=1, _incr_count=0, _decr_count=0, _found_inf=flag(),
        _temp_found_inf_value_false=flag(), _temp_found_inf_fp16=flag(), _temp_found_inf_bf16=flag(),
        _temp_found_inf_fp32=flag(), _scale=paddle.to_tensor(np.array([scale], np.float32)), _cache_found_inf=None,
        _optimizer_states=defaultdict(_refresh_optimizer_state))
    assert scaler.is_enable() and float(scaler.scale(paddle.ones([1]))[0]) == scale
    return scaler


def test_grad_scaler_step_equals_the_plain_step(demo):
    """The --use_fp16 update path (loss x 2**16, backward, unscale, global-norm clip, SGD step) gives the
    same parameters as the plain step: the scale is undone before clipping (the clip norm, 1e4, is above
    the true gradients' norm and far below the scaled ones'). (Autocast and the scaler act
    on a GPU only; here the scaler is switched on by hand to check the update order on the CPU.)"""
    from dacdetr.main import get_args_parser
    from dacdetr.paddle import build_model
    from dacdetr.paddle.convert import load_into

    args = get_args_parser().parse_args(TINY + ["--coco_path", str(demo), "--batch_size", "2"])
    ds = pdata.build("train", args)
    batch = next(pmain._batches(ds, 2, False, None, True))
    paddle.seed(0)
    model_a, criterion_a, _ = build_model(args)
    model_b, criterion_b, _ = build_model(args)
    load_into(model_b, model_a.state_dict())
    before = {k: v.numpy().copy() for k, v in model_a.named_parameters()}
    params = {}
    for name, model, criterion in (("plain", model_a, criterion_a), ("scaled", model_b, criterion_b)):
        opt = paddle.optimizer.Momentum(learning_rate=0.01, momentum=0.9, parameters=pmain.build_param_groups(model, args),
                                        grad_clip=paddle.nn.ClipGradByGlobalNorm(1e4))
        scaler = _scaler_enabled_on_cpu(2.0 ** 16) if name == "scaled" else None
        paddle.seed(1)  # same denoising queries and one-to-many subsets in both runs
        stats = pmain.train_one_epoch(model, criterion, [batch], opt, 0, print_freq=100, scaler=scaler)
        assert math.isfinite(stats["loss"])
        params[name] = {k: v.numpy().copy() for k, v in model.named_parameters() if not v.stop_gradient}
    moved = [k for k in params["plain"] if not np.array_equal(params["plain"][k], before[k])]
    assert len(moved) > 20
    for k in params["plain"]:
        np.testing.assert_allclose(params["scaled"][k], params["plain"][k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_deformable_attention_runs_in_float32_under_autocast(monkeypatch):
    """Under mixed precision the deformable attention casts half-precision inputs to float32 and runs with
    autocast off, as the PyTorch layer; emulated on the CPU by reporting autocast as on."""
    from dacdetr.paddle.transformer import MSDeformAttn

    paddle.seed(0)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    shapes = [(3, 4), (2, 2)]
    rng = np.random.RandomState(0)
    query = paddle.to_tensor(rng.randn(1, 5, 16).astype(np.float16))
    src = paddle.to_tensor(rng.randn(1, 16, 16).astype(np.float16))
    ref = paddle.to_tensor(rng.rand(1, 5, 2, 2).astype(np.float32))
    expected = layer(query.astype("float32"), ref, src.astype("float32"), shapes)
    monkeypatch.setattr(paddle.amp, "is_autocast_enabled", lambda *a, **k: True)
    out = layer(query, ref, src, shapes)
    assert out.dtype == paddle.float32
    np.testing.assert_array_equal(out.numpy(), expected.numpy())


@pytest.mark.parametrize("n, world", [(7, 2), (7, 3), (4, 2), (2, 3)])
def test_shards_are_the_contiguous_sampler_split(n, world):
    """Each process's share of an epoch's order: the PyTorch script's ContiguousDistributedSampler."""
    from common.data import ContiguousDistributedSampler

    order = np.random.RandomState(0).permutation(n)
    for rank in range(world):
        sampler = ContiguousDistributedSampler(list(range(n)), num_replicas=world, rank=rank, shuffle=False)
        assert pmain._shard(order, rank, world).tolist() == [int(order[i]) for i in sampler]


@pytest.mark.slow
def test_two_process_cpu_training_and_merged_eval(tmp_path):
    """``python -m paddle.distributed.launch --nproc_per_node 2 dacdetr/paddle/main.py``: two CPU processes
    (gloo) train one epoch on their halves of the data with averaged gradients; rank 0 alone writes the
    checkpoints and log.txt and prints; the evaluation merges both halves: its COCO numbers are those of a
    single-process evaluation of the saved weights (after one epoch they may well be all 0; the merge
    itself is checked detection by detection in ``test_evaluation_shards_merge_into_the_single_process_result``)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dacdetr.main import get_args_parser
    from dacdetr.paddle import build_model
    from dacdetr.paddle.convert import load_into

    root = Path(__file__).resolve().parents[1]
    data, out, logs = tmp_path / "data", tmp_path / "out", tmp_path / "logs"
    build_demo_coco(data, n_train=4, n_val=4, seed=1)
    flags = TINY[:TINY.index("--batch_size")] + ["--batch_size", "1"] + TINY[TINY.index("--batch_size") + 2:]
    flags += ["--coco_path", str(data), "--output_dir", str(out), "--epochs", "1"]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
                           str(logs), str(root / "dacdetr" / "paddle" / "main.py"), *flags],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    worker0, worker1 = (logs / "workerlog.0").read_text(), (logs / "workerlog.1").read_text()
    assert proc.returncode == 0, worker0[-3000:] + worker1[-3000:]
    assert "Epoch: [0] [1]" in worker0 and "Epoch: [0] [2]" not in worker0  # 2 of the 4 images per process
    assert "Epoch: [0]" not in worker1 and " Average " not in worker1  # rank 1 stays quiet
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert len(log) == 1 and (out / "checkpoint0000.safetensors").is_file()

    args = get_args_parser().parse_args(flags)
    model, criterion, post = build_model(args)
    state, _, _ = pmain.load_checkpoint(out / "checkpoint0000.safetensors")
    load_into(model, state)
    ds = pdata.build("val", args)
    stats, _ = pmain.evaluate(model, criterion, post, ds, ds.coco, 1, print_freq=100)
    np.testing.assert_allclose(log[0]["test_coco_eval_bbox"], stats["coco_eval_bbox"], atol=1e-9)
    # the losses: averaged over the processes, each normalised by the box count averaged over them
    # (as in PyTorch), so not the single-process values; all logged
    assert {f"test_{k}" for k in stats} <= set(log[0]) and all(math.isfinite(log[0][f"test_{k}"]) for k in stats
                                                                if k != "coco_eval_bbox")


def test_evaluation_shards_merge_into_the_single_process_result(demo, monkeypatch):
    """Two evaluation processes emulated in one: each evaluates its share (one of the 2 val images) and rank
    0 merges the gathered detections: the merged evaluator holds every image once with the single-process
    detections, and the same 12 numbers."""
    from dacdetr.main import get_args_parser
    from dacdetr.paddle import build_model

    args = get_args_parser().parse_args(TINY + ["--coco_path", str(demo), "--batch_size", "1"])
    paddle.seed(0)
    model, criterion, post = build_model(args)
    ds = pdata.build("val", args)
    _, single = pmain.evaluate(model, criterion, post, ds, ds.coco, 1, print_freq=100)

    gathered = {}

    def gather_as(rank):
        def gather(obj):  # rank 1 runs first; rank 0 then receives both processes' (image ids, detections)
            gathered[rank] = obj
            return [gathered[0], gathered[1]] if rank == 0 else [obj]
        return gather

    monkeypatch.setattr(pmain, "_mean_over_ranks", lambda values: dict(values))
    for rank in (1, 0):
        monkeypatch.setattr(pmain, "_world", lambda rank=rank: (rank, 2))
        monkeypatch.setattr(pmain, "_gather_objects", gather_as(rank))
        _, merged = pmain.evaluate(model, criterion, post, ds, ds.coco, 1, print_freq=100)
    assert len(gathered[0][0]) == len(gathered[1][0]) == 1  # one image per process
    assert merged.img_ids == single.img_ids == sorted(ds.ids)
    key = lambda r: (r["image_id"], r["score"], r["category_id"])  # noqa: E731
    assert len(merged.results["bbox"]) == len(single.results["bbox"]) > 0
    for a, b in zip(sorted(merged.results["bbox"], key=key), sorted(single.results["bbox"], key=key)):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        np.testing.assert_allclose(a["bbox"] + [a["score"]], b["bbox"] + [b["score"]], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(merged.coco_eval["bbox"].stats, single.coco_eval["bbox"].stats, atol=1e-9)
