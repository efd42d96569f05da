"""common.checkpoint: loading never runs code stored in a file; our checkpoints and the official formats
load with weights_only=True; one training-state checkpointer with a `last_checkpoint` pointer."""
import argparse
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common import checkpoint as ckpt

REPO = Path(__file__).resolve().parent.parent
TINY = ["-a", "dia_resnet", "--depth", "11", "--block-name", "bottleneck", "--demo"]


class Payload:
    """Unpickling this runs ``open(marker, 'w')`` (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Harmless:
    """A custom class with no payload: needs the trusted (full unpickle) path."""

    def __init__(self, value):
        self.value = value


def _evil(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "epoch": 1, "x": Payload(marker)}, path)
    return path, marker


def test_crafted_file_is_refused_and_payload_does_not_run(tmp_path, monkeypatch):
    monkeypatch.delenv(ckpt.TRUST_ENV, raising=False)
    path, marker = _evil(tmp_path)
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "io.open" in msg and e.value.type_name == "io.open"
    assert "--trust-checkpoint" in msg and "LAYERZOO_TRUST_CHECKPOINT=1" in msg
    assert not marker.exists()
    # the state-dict reader refuses it too, naming only the environment variable
    with pytest.raises(ckpt.UntrustedCheckpointError, match="set LAYERZOO_TRUST_CHECKPOINT=1") as e:
        ckpt.read_state_dict(path)
    assert "--trust-checkpoint" not in str(e.value) and not marker.exists()


def test_trusted_file_takes_the_full_unpickle(tmp_path, monkeypatch):
    monkeypatch.delenv(ckpt.TRUST_ENV, raising=False)
    path = tmp_path / "custom.pth"
    torch.save({"obj": Harmless(7)}, path)
    with pytest.raises(ckpt.UntrustedCheckpointError, match=r"test_common_checkpoint\.Harmless"):
        ckpt.load_checkpoint(path)
    assert ckpt.load_checkpoint(path, trust=True)["obj"].value == 7
    monkeypatch.setenv(ckpt.TRUST_ENV, "1")
    assert ckpt.load_checkpoint(path)["obj"].value == 7


@pytest.mark.parametrize("cut", ["half", "empty", "garbage"])
def test_corrupt_or_truncated_file(tmp_path, cut):
    path = tmp_path / "bad.pth"
    ckpt.save_checkpoint({"w": torch.arange(1000.0)}, path)
    raw = path.read_bytes()
    path.write_bytes({"half": raw[: len(raw) // 2], "empty": b"", "garbage": b"not a checkpoint at all"}[cut])
    with pytest.raises(ckpt.CorruptCheckpointError, match="corrupt or truncated checkpoint") as e:
        ckpt.load_checkpoint(path)
    assert str(path) in str(e.value)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ckpt.CheckpointNotFoundError, match="nothere.pth"):
        ckpt.load_checkpoint(tmp_path / "nothere.pth")
    assert issubclass(ckpt.CheckpointNotFoundError, FileNotFoundError)


def test_official_formats_load(tmp_path):
    # DIANet / pytorch-classification: module.-prefixed state_dict, floats, optimizer
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in net.state_dict().items()}, "acc": 71.5,
                "best_acc": 72.0, "optimizer": opt.state_dict()}, tmp_path / "dianet.pth.tar")
    got = ckpt.load_checkpoint(tmp_path / "dianet.pth.tar")
    assert got["best_acc"] == 72.0 and torch.equal(got["state_dict"]["module.weight"], net.weight)
    assert list(ckpt.read_state_dict(tmp_path / "dianet.pth.tar")) == ["weight", "bias"]
    # DAC-DETR / Deformable-DETR: args is an argparse.Namespace
    ns = argparse.Namespace(lr=2e-4, lr_backbone_names=["backbone.0"], device="cuda", frozen_weights=None)
    torch.save({"model": net.state_dict(), "lr_scheduler": {"step_size": 40}, "epoch": 11, "args": ns},
               tmp_path / "dacdetr.pth")
    got = ckpt.load_checkpoint(tmp_path / "dacdetr.pth")
    assert isinstance(got["args"], argparse.Namespace) and vars(got["args"]) == vars(ns)
    # NumPy RNG state, arrays and scalars (older versions of our own checkpoints, pycocotools results)
    np.random.seed(5)
    state = np.random.get_state()
    torch.save({"numpy": state, "arr": np.linspace(0, 1, 5), "s": np.float64(0.25), "i": np.int64(4),
                "dt": np.dtype("uint8")}, tmp_path / "np.pth")
    got = ckpt.load_checkpoint(tmp_path / "np.pth")
    assert got["numpy"][0] == "MT19937" and np.array_equal(got["numpy"][1], state[1])
    assert got["numpy"][1].dtype == np.uint32 and got["numpy"][2:] == state[2:]
    assert np.array_equal(got["arr"], np.linspace(0, 1, 5)) and got["s"] == 0.25 and got["i"] == 4
    assert got["dt"] == np.dtype("uint8")


def test_yacs_config_of_swin_lineage_releases(tmp_path):
    yacs_config = pytest.importorskip("yacs.config")
    cfg = yacs_config.CfgNode()
    cfg.MODEL = yacs_config.CfgNode()
    cfg.MODEL.NAME = "dwnet_tiny_patch4_window7_224"
    cfg.TRAIN = yacs_config.CfgNode({"BASE_LR": 5e-4, "OPTIMIZER": {"BETAS": (0.9, 0.999)}})
    cfg.freeze()
    torch.save({"model": {}, "max_accuracy": 81.2, "epoch": 299, "config": cfg}, tmp_path / "swin.pth")
    got = ckpt.load_checkpoint(tmp_path / "swin.pth")["config"]
    assert isinstance(got, yacs_config.CfgNode) and got == cfg and got.is_frozen()
    assert got.MODEL.NAME == cfg.MODEL.NAME and got.TRAIN.OPTIMIZER.BETAS == (0.9, 0.999)


def _train_objects(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    ema = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    return model, ema, opt, sched, scaler


def test_training_checkpointer_round_trip_and_pointer(tmp_path):
    model, ema, opt, sched, scaler = _train_objects(0)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
    scaler.scale(torch.ones(()))  # the scale tensor exists once used
    scaler.update(1024.0)
    ema.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
    saver = ckpt.TrainingCheckpointer(tmp_path / "run", filename="ckpt_epoch_{epoch}.pth", best_filename="best.pth")
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    assert saver.last() is None
    saver.save(model=model, ema=ema, optimizer=opt, scheduler=sched, scaler=scaler, epoch=1, iteration=30,
               best_metric=0.5, is_best=True, extra={"args": argparse.Namespace(lr=1e-2), "arch": "toy"})
    random.random(), np.random.rand(), torch.rand(1)  # the generators move on between the saves
    path = saver.save(model=model, ema=ema, optimizer=opt, scheduler=sched, scaler=scaler, epoch=2,
                      iteration=60, best_metric=0.75, extra={"args": argparse.Namespace(lr=1e-2), "arch": "toy"})
    expected = (random.random(), np.random.rand(), torch.rand(1))  # the generators right after the save
    # the pointer names the newest file; the best copy is the first save
    assert (tmp_path / "run" / "last_checkpoint").read_text().strip() == "ckpt_epoch_2.pth"
    newest = str(tmp_path / "run" / "ckpt_epoch_2.pth")
    assert saver.last() == ckpt.find_last_checkpoint(tmp_path / "run") == path == newest
    assert torch.load(tmp_path / "run" / "best.pth", weights_only=True)["epoch"] == 1

    # plain torch.load(weights_only=True), no allow-list, reads it; args became a dict
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model", "ema", "optimizer", "scheduler", "scaler", "epoch", "iteration", "best_metric", "rng",
                        "args", "arch"}
    assert raw["args"] == {"lr": 1e-2} and raw["iteration"] == 60 and raw["best_metric"] == 0.75

    # restore into fresh objects: every state equal, generators continue exactly
    model2, ema2, opt2, sched2, scaler2 = _train_objects(1)
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    state = ckpt.TrainingCheckpointer(tmp_path / "run").load(model=model2, ema=ema2, optimizer=opt2, scheduler=sched2,
                                                              scaler=scaler2)
    assert state["epoch"] == 2
    for a, b in ((model, model2), (ema, ema2)):
        for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    for k, v in opt.state_dict()["state"].items():
        for name, t in v.items():
            assert torch.equal(torch.as_tensor(t), torch.as_tensor(opt2.state_dict()["state"][k][name]))
    assert sched2.state_dict() == sched.state_dict() and sched2.get_last_lr() == sched.get_last_lr()
    assert scaler2.get_scale() == scaler.get_scale() == 1024.0
    got = (random.random(), np.random.rand(), torch.rand(1))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_checkpointer_official_key_names_and_copies(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = ckpt.TrainingCheckpointer(tmp_path, filename="checkpoint.pth.tar", best_filename="model_best.pth.tar",
                                      keys={"model": "state_dict", "best_metric": "best_acc"}, model_prefix="module.")
    saver.save(model=net, epoch=51, best_metric=60.0, is_best=False, copies=["checkpoint_50.pth.tar"], rng=False,
               extra={"acc": 59.0})
    got = torch.load(tmp_path / "checkpoint.pth.tar", weights_only=True)
    assert set(got) == {"state_dict", "epoch", "best_acc", "acc"}
    assert list(got["state_dict"]) == ["module.weight", "module.bias"]
    assert torch.load(tmp_path / "checkpoint_50.pth.tar", weights_only=True)["epoch"] == 51
    assert not (tmp_path / "model_best.pth.tar").exists()
    fresh = torch.nn.Linear(2, 2)
    assert saver.restore(got, model=fresh)["best_metric"] == 60.0
    assert torch.equal(fresh.weight, net.weight)
    # the pointer survives a deleted target by reporting nothing
    os.remove(tmp_path / "checkpoint.pth.tar")
    assert ckpt.find_last_checkpoint(tmp_path) is None


def test_rng_state_is_plain_and_round_trips(tmp_path):
    state = ckpt.get_rng_state()
    ckpt.save_checkpoint(state, tmp_path / "rng.pth")
    loaded = torch.load(tmp_path / "rng.pth", weights_only=True)  # no allow-list needed
    a = (random.random(), np.random.randn(3), torch.rand(2))
    ckpt.set_rng_state(loaded)
    b = (random.random(), np.random.randn(3), torch.rand(2))
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])
    # the older form (np.random.get_state() tuple) still restores
    old = dict(state, numpy=np.random.get_state())
    ckpt.set_rng_state(old)
    d = np.random.randn(2)
    ckpt.set_rng_state(old)
    assert np.array_equal(d, np.random.randn(2))


def _run_cifar(args, tmp_path, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop(ckpt.TRUST_ENV, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(REPO / "dianet" / "cifar.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_dianet_resume_refuses_crafted_file(tmp_path):
    path, marker = _evil(tmp_path)
    r = _run_cifar(TINY + ["--resume", str(path), "-c", "out"], tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and str(path) in r.stderr and "io.open" in r.stderr
    assert "--trust-checkpoint" in r.stderr and "LAYERZOO_TRUST_CHECKPOINT=1" in r.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_dianet_resume_truncated_file(tmp_path):
    path = tmp_path / "checkpoint.pth.tar"
    ckpt.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.zeros(100)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    r = _run_cifar(TINY + ["--resume", str(path), "-c", "out"], tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"corrupt or truncated checkpoint {path}" in r.stderr


def test_dianet_trust_flag_and_variable_take_the_full_unpickle(tmp_path):
    # a harmless custom class (defined in a module the child can import) in an otherwise wrong checkpoint:
    # trusted, the file is unpickled and the run fails later on the model keys (not on the unpickling)
    (tmp_path / "mymod.py").write_text("class Thing:\n    pass\n")
    code = ("import sys, torch; sys.path.insert(0, '.'); import mymod; "
            "torch.save({'epoch': 1, 'state_dict': {'w': torch.zeros(1)}, 'thing': mymod.Thing()}, 'custom.pth')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True, timeout=60)
    base = TINY + ["--resume", "custom.pth", "-c", "out", "--workers", "0"]
    env = {"PYTHONPATH": f"{REPO}{os.pathsep}{tmp_path}"}
    r = _run_cifar(base, tmp_path, env)
    assert r.returncode == 2 and "mymod.Thing" in r.stderr and "refusing" in r.stderr
    for args, extra in ((base + ["--trust-checkpoint"], {}), (base, {ckpt.TRUST_ENV: "1"})):
        r = _run_cifar(args, tmp_path, dict(env, **extra))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "refusing" not in r.stderr and "does not match" in r.stderr  # got past the load


def test_launcher_reads_the_last_pointer(tmp_path, monkeypatch):
    from slurm import launch as L

    monkeypatch.chdir(tmp_path)
    spec = L.SCRIPTS["dianet/cifar.py"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pth.tar").write_text("x")
    assert L.checkpoint_path(spec, ["-c", "run"]) == "run/checkpoint.pth.tar"  # no pointer: the table's name
    (run / "ckpt_epoch_7.pth").write_text("x")
    ckpt.write_last_pointer(run, "ckpt_epoch_7.pth")
    assert L.checkpoint_path(spec, ["-c", "run"]) == os.path.join("run", "ckpt_epoch_7.pth")
    # Swin lineage: the run folder is <output>/<model name>/<tag>/
    d = tmp_path / "out" / "dwnet_tiny" / "default"
    d.mkdir(parents=True)
    (d / "ckpt_epoch_3.pth").write_text("x")
    ckpt.write_last_pointer(d, "ckpt_epoch_3.pth")
    assert L.checkpoint_path(L.SCRIPTS["dwnet/main.py"], ["--output", "out"]) == str(d.relative_to(tmp_path) /
                                                                                      "ckpt_epoch_3.pth")


def test_launcher_without_submitit_names_the_extra(tmp_path):
    code = ("import runpy, sys; sys.modules['submitit'] = None; "
            f"sys.argv = ['slurm/launch.py', '--dry-run', '--', 'dianet/cifar.py', '--depth', '20']; "
            f"runpy.run_path({str(REPO / 'slurm' / 'launch.py')!r}, run_name='__main__')")
    env = dict(os.environ, PYTHONPATH="", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "submitit" in r.stderr and "pip install -e '.[slurm]'" in r.stderr
    assert r.stdout == "" and list(tmp_path.iterdir()) == []
