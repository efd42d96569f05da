"""common/: registry, checkpoints, logging, data, samplers, engine pieces (values, not just 'runs')."""
import argparse
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from common import checkpoint as ckpt
from common import data as cdata
from common import engine
from common.fingerprint import det_init_, det_input, rel_err
from common.flops import count_flops, count_params
from common.logging import JsonlLogger, OfficialLogger
from common.registry import Registry, UnknownModelError


# ---------------------------------------------------------------- registry
def test_registry_create_list_and_unknown():
    reg = Registry("toy")

    @reg.register("lin", default_cfg=dict(input_size=(3, 4)))
    def lin(n=2):
        return nn.Linear(n, 1)

    assert reg.list_models() == ["lin"] and "lin" in reg
    assert reg.create("lin", n=5).in_features == 5
    assert reg.default_cfg("lin") == {"input_size": (3, 4)}
    with pytest.raises(UnknownModelError) as err:
        reg.create("resnet20")
    assert "resnet20" in str(err.value) and "lin" in str(err.value)
    with pytest.raises(ValueError):
        reg.register("lin")(lin)


# ---------------------------------------------------------------- checkpoints
class Small(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "checkpoint.pth.tar"
    ckpt.save_checkpoint({"epoch": 1}, path)
    assert ckpt.load_checkpoint(path)["epoch"] == 1

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(path.parent)) == ["checkpoint.pth.tar"]  # no temp file left behind


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        ckpt.load_checkpoint(tmp_path / "nothere.pth")


def test_strict_load_strips_module_and_reports_mismatch():
    src, dst = Small(), Small()
    det_init_(src)
    sd = {"module." + k: v for k, v in src.state_dict().items()}
    ckpt.load_state_dict_strict(dst, {"state_dict": sd})
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))

    foreign = Small(width=8).state_dict()
    foreign["extra.weight"] = torch.zeros(1)
    del foreign["fc.bias"]
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        ckpt.load_state_dict_strict(Small(), foreign)
    msg = str(err.value)
    assert "1 missing keys" in msg and "fc.bias" in msg
    assert "1 unexpected keys" in msg and "extra.weight" in msg
    assert "conv.weight: checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


def test_read_state_dict_unwraps_and_strips_module(tmp_path):
    a, b = torch.arange(3.0), torch.ones(2, 2)
    # plain tensors file (weights_only=True path), DDP prefix on some keys only
    ckpt.save_checkpoint({"module.fc.weight": a, "fc.bias": b}, tmp_path / "plain.pth")
    sd = ckpt.read_state_dict(tmp_path / "plain.pth")
    assert sorted(sd) == ["fc.bias", "fc.weight"] and torch.equal(sd["fc.weight"], a)
    # training checkpoints: "model" / "state_dict" sub-dicts; argparse.Namespace is on the safe allow-list
    ckpt.save_checkpoint({"model": {"module.w": a}, "args": argparse.Namespace(lr=1.0)}, tmp_path / "ckpt.pth")
    assert list(ckpt.read_state_dict(tmp_path / "ckpt.pth")) == ["w"]
    ckpt.save_checkpoint({"state_dict": {"w": b}, "model": {"x": a}}, tmp_path / "sd.pth")
    assert list(ckpt.read_state_dict(tmp_path / "sd.pth")) == ["w"]
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ckpt.read_state_dict(tmp_path / "missing.pth")


def test_rng_state_roundtrip():
    state = ckpt.get_rng_state()
    a = (torch.rand(3), np.random.rand(), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]


# ---------------------------------------------------------------- logging
def test_official_logger_format_and_resume_truncation(tmp_path):
    path = tmp_path / "log.txt"
    log = OfficialLogger(str(path), title="cifar-10-x")
    log.set_names(["Learning Rate", "Train Loss"])
    log.append([0.1, 2.5])
    log.append([0.1, 1.25])
    log.append([0.01, 1.0])
    log.close()
    assert path.read_text() == ("Learning Rate\tTrain Loss\t\n0.100000\t2.500000\t\n"
                                "0.100000\t1.250000\t\n0.010000\t1.000000\t\n")
    log = OfficialLogger(str(path), resume=True, keep_rows=2)
    log.set_names(["Learning Rate", "Train Loss"])  # no second header on resume
    log.append([0.01, 0.5])
    log.close()
    assert log.read_rows() == [[0.1, 2.5], [0.1, 1.25], [0.01, 0.5]]

    j = JsonlLogger(str(tmp_path / "log.jsonl"))
    for e in range(3):
        j.log({"epoch": e})
    JsonlLogger(str(tmp_path / "log.jsonl"), resume=True, keep_rows=1).log({"epoch": 9})
    assert (tmp_path / "log.jsonl").read_text() == '{"epoch": 0}\n{"epoch": 9}\n'


# ---------------------------------------------------------------- data
def test_demo_set_is_the_sklearn_digits(demo_root):
    from sklearn.datasets import load_digits

    folder = os.path.join(demo_root, "cifar-10-batches-py")
    assert sorted(os.listdir(folder)) == (["SHA256SUMS", "batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)]
                                          + ["test_batch"])
    train = cdata.load_cifar(demo_root, "cifar10", train=True)
    test = cdata.load_cifar(demo_root, "cifar10", train=False)
    assert (len(train), len(test)) == (1437, 360)
    assert train.classes == [str(d) for d in range(10)]
    assert all(35 <= c <= 37 for c in np.bincount(test.targets))  # stratified: ~36 per class
    # every demo image is an 8x8 digit upscaled: downsample back and find it among the originals.
    digits = load_digits()
    orig = torch.from_numpy(digits.images.astype(np.float32) / 16.0)
    batch = cdata.read_cifar_pickle(os.path.join(folder, "test_batch"))
    img = batch["data"][0].reshape(3, 32, 32).astype(np.float32) / 255
    assert np.array_equal(img[0], img[1]) and np.array_equal(img[0], img[2])  # grey as RGB
    small = torch.nn.functional.avg_pool2d(torch.from_numpy(img[0])[None, None], 4)[0, 0]
    dist = ((orig - small) ** 2).flatten(1).sum(1)
    best = int(dist.argmin())
    assert digits.target[best] == batch["labels"][0]
    up = torch.nn.functional.interpolate(orig[best][None, None], size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(up[0, 0].clamp(0, 1), torch.from_numpy(img[0]), atol=0.5 / 255 + 1e-6)


def test_missing_dataset_message(tmp_path):
    with pytest.raises(cdata.DatasetNotFoundError) as err:
        cdata.load_cifar(str(tmp_path), "cifar100", train=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg and "train, test, meta" in msg and "--demo" in msg
    with pytest.raises(cdata.DatasetNotFoundError, match="ImageFolder"):
        cdata.load_imagefolder(str(tmp_path), "train")


@pytest.mark.parametrize("n,batch,world", [(10, 4, 2), (29, 8, 3), (7, 7, 1)])
def test_global_batch_sampler_shards_the_single_process_batches(n, batch, world):
    single = list(cdata.GlobalBatchSampler(n, batch, shuffle=True, seed=3))
    shards = [list(cdata.GlobalBatchSampler(n, batch, r, world, shuffle=True, seed=3)) for r in range(world)]
    for step, full in enumerate(single):
        if len(full) < world:
            assert all(len(s) == step for s in shards)
            continue
        assert sum((s[step] for s in shards), []) == full
    s = cdata.GlobalBatchSampler(n, batch, seed=3)
    s.set_epoch(1)
    assert list(s) != single and sorted(sum(list(s), [])) == list(range(n))


def test_shard_sampler_partitions():
    parts = [list(cdata.ShardSampler(11, r, 3)) for r in range(3)]
    assert sum(parts, []) == list(range(11))


def test_seeded_augment_ignores_global_rng(demo_root):
    ds = cdata.SeededAugment(cdata.load_cifar(demo_root, "cifar10", True, cdata.cifar_transforms(True)), seed=5)
    torch.manual_seed(0)
    a = ds[3][0]
    torch.manual_seed(123)
    torch.rand(100)
    b = ds[3][0]
    assert torch.equal(a, b)
    ds.set_epoch(1)
    different = [not torch.equal(ds[i][0], cdata.SeededAugment(ds.dataset, 5)[i][0]) for i in range(8)]
    assert any(different)


# ---------------------------------------------------------------- engine
def _slow_topk(output, target, k):
    hits = 0
    for row, t in zip(output.tolist(), target.tolist()):
        order = sorted(range(len(row)), key=lambda j: -row[j])
        hits += t in order[:k]
    return 100.0 * hits / len(row and target)


def test_accuracy_matches_slow_loop():
    g = torch.Generator().manual_seed(0)
    out, tgt = torch.randn(37, 10, generator=g), torch.randint(0, 10, (37,), generator=g)
    top1, top5 = engine.accuracy(out, tgt, (1, 5))
    assert math.isclose(top1.item(), _slow_topk(out, tgt, 1), rel_tol=1e-6)
    assert math.isclose(top5.item(), _slow_topk(out, tgt, 5), rel_tol=1e-6)


def test_amp_flags_map_onto_torch_amp():
    import argparse

    p = engine.add_engine_args(argparse.ArgumentParser())
    dev = torch.device("cpu")
    assert engine.amp_from_args(p.parse_args([]), dev).dtype is None
    assert engine.amp_from_args(p.parse_args(["--amp", "bf16"]), dev).dtype is torch.bfloat16
    assert engine.amp_from_args(p.parse_args(["--amp-opt-level", "O0"]), dev).dtype is None
    cfg = engine.amp_from_args(p.parse_args(["--amp-opt-level", "O1"]), dev)
    assert cfg.dtype is torch.float16 and cfg.make_scaler().is_enabled()


def test_nan_loss_stops_before_the_step():
    from common.distributed import DistEnv

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3, 2, 2)
    x[0, 0, 0, 0] = float("nan")
    loader = [(x, torch.tensor([0, 1, 2, 0]))]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(engine.NonFiniteLossError, match="epoch 3, step 0"):
        engine.train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, DistEnv(), engine.AmpConfig(), epoch=3,
                               log=lambda *a: None)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_global_batchnorm_single_process_is_batchnorm():
    bn = nn.BatchNorm2d(3)
    det_init_(bn)
    gbn = engine.GlobalBatchNorm(3)
    gbn.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5)
    assert torch.equal(bn(x), gbn(x))
    wrapped = engine.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    assert type(wrapped[1]) is engine.GlobalBatchNorm


def test_param_and_flop_counts():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 2))
    assert count_params(m) == 3 * 8 * 9 + 128 * 2 + 2
    assert count_flops(m, torch.randn(1, 3, 4, 4)) == 3 * 8 * 9 * 16 + 128 * 2


def test_fingerprint_helpers_deterministic():
    a, b = Small(), Small()
    det_init_(a)
    det_init_(b)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert rel_err(det_input((2, 3), 0), det_input((2, 3), 0)) == 0.0


def test_drop_path_schedule():
    from timm.layers import DropPath

    model = nn.Sequential(DropPath(0.0), nn.Dropout(0.5), nn.Sequential(DropPath(0.0)))
    assert engine.drop_path_rate_at(0.2, 0, 10, "linear") == 0.0
    assert engine.drop_path_rate_at(0.2, 9, 10, "linear") == pytest.approx(0.2)
    assert engine.drop_path_rate_at(0.2, 3, 10) == 0.2
    engine.set_drop_path(model, 0.1)
    assert model[0].drop_prob == 0.1 and model[2][0].drop_prob == 0.1 and model[1].p == 0.5


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / split / cls / "a.JPEG")
    ds = cdata.load_imagefolder(str(tmp_path), "val", cdata.imagenet_transforms(False, size=24, resize=28))
    x, y = ds[1]
    assert ds.classes == ["n01", "n02"] and y == 1 and x.shape == (3, 24, 24)
    expect = (torch.tensor([10, 20, 30]) / 255 - torch.tensor(cdata.IMAGENET_MEAN)) / torch.tensor(cdata.IMAGENET_STD)
    assert torch.allclose(x[:, 5, 5], expect.float(), atol=1e-5)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_step_on_cpu(amp):
    import argparse

    from common.distributed import DistEnv

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).to(memory_format=torch.channels_last)
    ref = [p.detach().clone() for p in model.parameters()]
    args = engine.add_engine_args(argparse.ArgumentParser()).parse_args(["--amp", amp, "--channels-last"])
    cfg = engine.amp_from_args(args, torch.device("cpu"))
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stats = engine.train_one_epoch(model, [(x, y)], nn.CrossEntropyLoss(), opt, DistEnv(), cfg, cfg.make_scaler(),
                                   channels_last=True, clip_grad=1.0, log=lambda *a: None, print_freq=0)
    assert math.isfinite(stats["loss"]) and stats["count"] == 6
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(ref, model.parameters()))
