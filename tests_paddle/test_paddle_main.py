"""``python -m dacdetr.paddle.main``: train, save, resume, evaluate (12 COCO numbers), bad input -> exit 2."""
import json

import numpy as np
import paddle
import pytest
import torch

from dacdetr.datasets.demo import build_demo_coco
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
    p_stats, _ = pmain.evaluate(pm, pc, ppost, ds, base_ds, args.batch_size, print_freq=100)

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
