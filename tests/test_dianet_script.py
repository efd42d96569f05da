"""dianet/cifar.py end to end on the bundled demo data: training, resume after a kill, DDP, bad inputs."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_script

SCRIPT = os.path.join("dianet", "cifar.py")
TINY = ["-a", "dia_resnet", "--depth", "11", "--block-name", "bottleneck", "--train-batch", "96",
        "--test-batch", "120", "--workers", "0", "--manualSeed", "7", "--print-freq", "0"]


def _args(demo_root, ckdir, *extra):
    # demo_root is <data-root>/digits-demo
    return [SCRIPT, *TINY, "--demo", "--data-root", os.path.dirname(demo_root), "-c", str(ckdir), *extra]


def _rows(ckdir):
    with open(os.path.join(ckdir, "log.txt")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "Learning Rate\tTrain Loss\tValid Loss\tTrain Acc.\tValid Acc.\t"
    return lines[1:]


@pytest.mark.slow
def test_resume_after_kill_reproduces_uninterrupted_run(demo_root, tmp_path):
    full = tmp_path / "full"
    run_script(_args(demo_root, full, "--epochs", "2", "--schedule", "1"), check=True)
    rows = _rows(full)
    assert len(rows) == 2
    import json

    records = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert abs(records[1]["test_top1"] - float(rows[1].split("\t")[4])) < 1e-5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("test_top1")] == [1, 2]
    assert (full / "model_best.pth.tar").is_file()
    from common.config import read_yaml

    flags = read_yaml(full / "config.yaml")  # the resolved flags of the run
    assert flags["arch"] == "dia_resnet" and flags["depth"] == 11 and flags["epochs"] == 2
    assert flags["schedule"] == [1] and flags["manualSeed"] == 7 and flags["checkpoint"] == str(full)

    # Same run, killed in the middle of epoch 2, then resumed from the epoch-1 checkpoint.
    cut = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, *_args(demo_root, cut, "--epochs", "2", "--schedule", "1",
                                                   "--print-freq", "1")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen_epoch2 = False
    for line in proc.stdout:
        if line.startswith("Epoch: [2 | 2]"):
            seen_epoch2 = True
        if seen_epoch2 and line.startswith("(3/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert seen_epoch2 and len(_rows(cut)) == 1
    ckpt_file = cut / "checkpoint.pth.tar"
    assert torch.load(ckpt_file, weights_only=True)["epoch"] == 1
    assert (cut / "last_checkpoint").read_text().strip() == "checkpoint.pth.tar"
    run_script(_args(demo_root, cut, "--epochs", "2", "--schedule", "1", "--resume", str(ckpt_file)), check=True)
    assert _rows(cut) == rows  # identical losses and accuracies, no duplicated rows


@pytest.mark.slow
def test_two_process_gloo_equals_single_process(demo_root, tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    common = ["--epochs", "1", "--sync-bn", "--lr", "0.02"]  # lr 0.1 is chaotic in epoch 1: thread counts alone move it
    run_script(_args(demo_root, single, *common), check=True)
    run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *_args(demo_root, ddp, *common)], check=True)
    a = [float(x) for x in _rows(single)[0].split("\t") if x]
    b = [float(x) for x in _rows(ddp)[0].split("\t") if x]
    assert a[0] == b[0]
    # Same images per step, same augmentation, global BN statistics: the runs differ only by float32 rounding
    # (the step itself is equal to 1e-9 in float64, see test_common_ddp), amplified a little by 15 SGD steps.
    assert abs(a[1] - b[1]) < 5e-3 and abs(a[2] - b[2]) < 2e-2
    assert abs(a[3] - b[3]) < 0.5 and abs(a[4] - b[4]) < 1.0
    assert not os.path.exists(ddp / "rank1")  # only rank 0 writes


def test_unknown_arch_is_one_clear_message(tmp_path):
    proc = run_script([SCRIPT, "--demo", "-c", str(tmp_path)])
    assert proc.returncode == 2
    assert "unknown architecture -a 'resnet20'" in proc.stderr and "dia_resnet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_names_path_and_demo(tmp_path):
    proc = run_script([SCRIPT, "-a", "dia_resnet", "--dataset", "cifar100", "--data-root", str(tmp_path / "nope"),
                       "-c", str(tmp_path / "ck"), "--workers", "0"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nope" / "cifar-100-python") in proc.stderr and "--demo" in proc.stderr


@pytest.mark.slow
def test_foreign_checkpoint_and_nan_loss(demo_root, tmp_path):
    good = tmp_path / "good"
    run_script(_args(demo_root, good, "--epochs", "1"), check=True)
    ckpt_file = good / "checkpoint.pth.tar"
    before = ckpt_file.read_bytes()
    from PIL import Image

    assert Image.open(good / "log.png").size[0] > 400  # the learning curves, drawn at the end of the run

    # -e evaluates the checkpoint and reproduces the accuracy logged for its epoch; pointed at the training
    # folder itself it leaves the training logs as they were.
    logs = {n: (good / n).read_bytes() for n in ("log.txt", "log.jsonl")}
    proc = run_script(_args(demo_root, good, "-e", "--resume", str(ckpt_file)), check=True)
    assert {n: (good / n).read_bytes() for n in logs} == logs and ckpt_file.read_bytes() == before
    run_script(_args(demo_root, tmp_path / "eval", "-e", "--resume", str(ckpt_file)), check=True)
    assert not (tmp_path / "eval").exists()
    line = [x for x in proc.stdout.splitlines() if x.startswith(" Test Loss:")][0]
    logged = [float(x) for x in _rows(good)[0].split("\t") if x]
    assert abs(float(line.rsplit(":", 1)[1]) - logged[4]) < 0.01
    assert abs(float(line.split(",")[0].split(":")[1]) - logged[2]) < 1e-5
    assert not (tmp_path / "eval" / "config.yaml").exists()  # evaluation writes no run config

    # A checkpoint of another architecture: one message listing the mismatched keys.
    proc = run_script([SCRIPT, "-a", "dia_preresnet", "--depth", "11", "--block-name", "bottleneck", "--demo",
                       "--data-root", os.path.dirname(demo_root), "-c", str(tmp_path / "other"), "--workers", "0",
                       "--resume", str(ckpt_file), "--epochs", "2"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing keys" in proc.stderr and "layer1.ModuleList.0.bn_additional.weight" in proc.stderr
    assert "unexpected keys" in proc.stderr

    # A diverging run: stops at the first non-finite loss, naming the step; the last checkpoint is intact.
    proc = run_script(_args(demo_root, good, "--epochs", "2", "--lr", "1e12", "--resume", str(ckpt_file)))
    assert proc.returncode != 0 and "non-finite loss" in proc.stderr and "epoch 1, step" in proc.stderr
    assert str(ckpt_file) in proc.stderr
    assert ckpt_file.read_bytes() == before and len(_rows(good)) == 1


def test_run_code_dry_run_prints_the_four_recipes():
    proc = run_script([os.path.join("dianet", "run_code.py"), "--recipe", "all", "--dry-run"], check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].endswith("-a dia_resnet --depth 164 --block-name bottleneck --train-batch 128 --dataset "
                             "cifar100 --epochs 180 --schedule 60 120 --gamma 0.1 --wd 1e-4 --checkpoint "
                             "checkpoints/cifar100/resnet-164-dia-rate4")
    assert "--depth 52 --widen-factor 4 --drop 0.3" in lines[2]
    assert "--epochs 200 --schedule 80 120 160 --wd 5e-4 --gamma 0.2" in lines[2]
    assert "-a dia_resnext" in lines[3] and "--cardinality 8" in lines[3]


def test_lr_rule_is_the_official_one():
    """Officially lr starts at --lr at --start-epoch and is multiplied by gamma at the start of each epoch that
    is *in* --schedule; after --resume ours follows the schedule from epoch 0 (a deliberate fix)."""
    import argparse

    from common.train import cifar

    def official(lr, gamma, schedule, start, epochs):  # the official loop, state['lr'] mutated in place
        state, out = lr, []
        for epoch in range(start, epochs):
            if epoch in schedule:
                state *= gamma
            out.append(state)
        return out

    for schedule, start in (([3, 6], 0), ([3, 6], 4), ([3, 3, 6], 0), ([0, 5], 0), ([2, 8], 9), ([6, 3], 2)):
        a = argparse.Namespace(lr=0.1, gamma=0.2, schedule=schedule)
        ours = [cifar.lr_at(a, e, first_epoch=start) for e in range(start, 10)]
        assert ours == pytest.approx(official(0.1, 0.2, schedule, start, 10), rel=1e-15), (schedule, start)
    a = argparse.Namespace(lr=0.1, gamma=0.1, schedule=[2, 4])
    assert [cifar.lr_at(a, e, first_epoch=0) for e in (3, 4)] == pytest.approx([0.01, 0.001])  # resumed at 3


def test_variant_flags_build_the_variant():
    """cifar.py's model flags for each named variant (what run_code.py's recipes use) build exactly that variant."""
    import dianet
    from dianet import cifar

    for v in dianet.variants():
        if set(v.kwargs) - set(cifar._VARIANT_FLAGS):
            continue  # fc_share__dense164: its reduction has no cifar.py flag
        args = cifar.get_parser().parse_args(cifar.variant_args(v.name))
        torch.manual_seed(0)
        ours = cifar.build_model(args, v.num_classes)
        torch.manual_seed(0)
        ref = dianet.create_model(v.name)
        assert [(k, t.shape) for k, t in ours.state_dict().items()] == \
               [(k, t.shape) for k, t in ref.state_dict().items()], v.name
