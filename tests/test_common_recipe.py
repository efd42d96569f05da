"""The ImageNet recipe pieces (common.train.recipe), per-sample seeded augmentation with timm's transforms, the
digits demo as an ImageFolder with its checksum manifest, and the mp.spawn / pytorch/examples launch modes."""
import argparse
import json
import math
import os
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from torch.utils.data import Dataset

from common import data as cdata
from common import distributed as D
from common.train import recipe


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.layer_attention = nn.Linear(4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(2, 4))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.fc = nn.Linear(4, 2)

    def no_weight_decay(self):
        return {"pos_embed"}


def _wd_by_name(groups):
    return {n: g["weight_decay"] for g in groups for n in g["param_names"]}


# ---------------------------------------------------------------- optimizer
def test_param_groups_no_decay_for_1d_and_model_names():
    opt = recipe.build_optimizer(_Net(), "adamw", lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999))
    assert isinstance(opt, torch.optim.AdamW)
    assert _wd_by_name(opt.param_groups) == {
        "conv.weight": 0.05, "layer_attention.weight": 0.05, "fc.weight": 0.05,
        "conv.bias": 0.0, "bn.weight": 0.0, "bn.bias": 0.0, "layer_attention.bias": 0.0, "fc.bias": 0.0,
        "pos_embed": 0.0}  # 'frozen' (requires_grad=False) is left out
    assert all(g["lr"] == 1e-3 and g["eps"] == 1e-8 for g in opt.param_groups)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(p.requires_grad for p in _Net().parameters())


def test_param_groups_examples_style_with_override():
    # pytorch/examples: decay on every parameter; DLA's --wd-la: its own decay for '*layer_atten*'
    opt = recipe.build_optimizer(_Net(), "momentum", lr=0.1, weight_decay=1e-4, filter_bias_and_bn=False,
                                 no_weight_decay=(), overrides=[("*layer_atten*", {"weight_decay": 5e-5})])
    assert type(opt) is torch.optim.SGD and all(not g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)
    wd = _wd_by_name(opt.param_groups)
    assert wd.pop("layer_attention.weight") == 5e-5 and wd.pop("layer_attention.bias") == 5e-5
    assert set(wd.values()) == {1e-4} and "bn.bias" in wd and "pos_embed" in wd
    assert recipe.build_optimizer(_Net(), "sgd", lr=0.1).param_groups[0]["nesterov"]  # timm's 'sgd' is Nesterov


# ---------------------------------------------------------------- schedules
def _opt(lr=0.1, lr2=None):
    groups = [{"params": [nn.Parameter(torch.zeros(1))]}]
    if lr2 is not None:
        groups.append({"params": [nn.Parameter(torch.zeros(1))], "lr": lr2})
    return torch.optim.SGD(groups, lr=lr)


def test_per_iteration_cosine_with_warmup_matches_formula():
    opt = _opt(0.1, lr2=0.02)
    n, epochs, warm, wlr, mlr = 4, 10, 2, 1e-3, 1e-4
    sched = recipe.build_scheduler(opt, "cosine", epochs, updates_per_epoch=n, warmup_epochs=warm, warmup_lr=wlr,
                                   min_lr=mlr)
    for t in (0, 1, 7, 8, 13, 25, 39, 40, 47):
        sched.step_update(t)
        for group, base in zip(opt.param_groups, (0.1, 0.02)):
            if t < warm * n:
                expect = wlr + t * (base - wlr) / (warm * n)
            elif t < epochs * n:
                expect = mlr + 0.5 * (base - mlr) * (1 + math.cos(math.pi * t / (epochs * n)))
            else:
                expect = mlr
            assert group["lr"] == pytest.approx(expect, rel=1e-12, abs=1e-15), (t, base)


def test_per_epoch_step_and_prefixed_cosine():
    opt = _opt(0.1)
    sched = recipe.build_scheduler(opt, "step", 100, decay_epochs=30, decay_rate=0.1)
    for epoch in (0, 29, 30, 59, 60, 89, 90, 99):
        sched.step(epoch)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1 ** (epoch // 30), rel=1e-12)
    opt = _opt(0.1)
    sched = recipe.build_scheduler(opt, "cosine", 95, warmup_epochs=5, warmup_lr=0.0, warmup_prefix=True)
    for epoch in (0, 3, 5, 50, 99):
        sched.step(epoch)
        expect = 0.1 * epoch / 5 if epoch < 5 else 0.05 * (1 + math.cos(math.pi * (epoch - 5) / 95))
        assert opt.param_groups[0]["lr"] == pytest.approx(expect, rel=1e-12, abs=1e-15)


def test_examples_lr_is_dla_gen_lr_and_examples_step():
    # DLA imagenet/run.sh: --lr 0.1 --warmup-epochs 3 (--warmup-lr 1e-4), step x0.1 every 30 epochs
    got = [recipe.examples_lr(e, 0.1, warmup_epochs=3, warmup_lr=1e-4) for e in (0, 1, 2, 3, 29, 30, 60, 90, 99)]
    assert got == pytest.approx([1e-4, 0.1 / 3, 0.2 / 3, 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4], rel=1e-12)
    assert recipe.examples_lr(7, 0.045, decay_epochs=1, decay_rate=0.98) == pytest.approx(0.045 * 0.98 ** 7)
    opt = _opt(0.1, lr2=0.5)
    recipe.set_lr(opt, 0.01)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01]


# ---------------------------------------------------------------- mixup and the losses
def _onehot(y, k, smoothing):
    off = smoothing / k
    out = torch.full((len(y), k), off, dtype=torch.float64)
    out[torch.arange(len(y)), y] = 1 - smoothing + off
    return out


def test_mixup_output_is_the_formula():
    assert recipe.build_mixup(10, 0.0, 0.0) is None
    mixup = recipe.build_mixup(7, mixup_alpha=1.0, cutmix_alpha=0.0, smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 6])
    np.random.seed(3)
    xm, target = mixup(x0.clone(), y)
    flipped = x0.flip(0)
    lam = float(((xm - flipped) / (x0 - flipped))[0, 0, 0, 0])
    assert 0.0 < lam < 1.0
    assert torch.allclose(xm, lam * x0 + (1 - lam) * flipped, rtol=0, atol=1e-12)
    expect = lam * _onehot(y, 7, 0.1) + (1 - lam) * _onehot(y.flip(0), 7, 0.1)
    assert torch.allclose(target.double(), expect, rtol=0, atol=1e-6)
    assert torch.allclose(target.sum(1).double(), torch.ones(6, dtype=torch.float64), atol=1e-6)


def _slow_ce(logits, q):
    total = 0.0
    for row, qrow in zip(logits.tolist(), q.tolist()):
        z = math.log(sum(math.exp(v) for v in row))
        total += sum(-qk * (v - z) for v, qk in zip(row, qrow))
    return total / len(logits)


def test_soft_target_and_label_smoothing_losses_match_hand_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    q = torch.rand(5, 4, generator=g, dtype=torch.float64)
    q = q / q.sum(1, keepdim=True)
    assert recipe.build_criterion(True)(logits, q).item() == pytest.approx(_slow_ce(logits, q), rel=1e-12)
    y = torch.tensor([0, 3, 1, 1, 2])
    smooth = recipe.build_criterion(False, 0.1)(logits, y).item()
    assert smooth == pytest.approx(_slow_ce(logits, _onehot(y, 4, 0.1)), rel=1e-12)
    assert recipe.build_criterion(False)(logits, y).item() == pytest.approx(_slow_ce(logits, _onehot(y, 4, 0.0)))


# ---------------------------------------------------------------- EMA
def test_ema_update_is_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    ema = recipe.build_ema(model, decay=0.9)
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(4, 3, dtype=torch.float64))  # moves BN running stats, num_batches_tracked -> 1
    ema.update(model)
    for k, v in ema.module.state_dict().items():
        new = model.state_dict()[k]
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * old[k] + 0.1 * new, rtol=1e-12, atol=1e-14), k
        else:
            assert torch.equal(v, new), k
    assert not ema.module.training


# ---------------------------------------------------------------- transforms and seeded augmentation
def _image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))


def test_timm_eval_transform_resize_crop_and_normalisation():
    tf = recipe.timm_transform(False, 32, crop_pct=0.875)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and tf.transforms[0].size == 36  # floor(32 / 0.875)
    assert str(tf.transforms[0].interpolation) == "InterpolationMode.BICUBIC"
    x = tf(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert x.shape == (3, 32, 32)
    expect = (torch.tensor([10, 200, 30]) / 255 - torch.tensor(cdata.IMAGENET_MEAN)) / torch.tensor(cdata.IMAGENET_STD)
    assert torch.allclose(x[:, 7, 9], expect.float(), atol=1e-5)
    tv = cdata.imagenet_transforms(False)  # the pytorch/examples transforms
    assert tv(Image.new("RGB", (300, 260))).shape == (3, 224, 224)


def test_timm_train_transform_is_the_swin_recipe():
    tf = recipe.timm_transform(True, 32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation" and "RandAugment" in names
    assert "ColorJitter" not in names  # timm drops color jitter when a RandAugment policy is set
    erase = tf.transforms[-1]
    assert type(erase).__name__ == "RandomErasing" and erase.probability == 0.25 and erase.mode == "pixel"
    assert tf(_image()).shape == (3, 32, 32)


class _SameImage(Dataset):
    """Every index holds the same picture: output differences come from the augmentation's seed only."""

    def __init__(self, transform):
        self.image, self.transform = _image(), transform

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return self.transform(self.image), 0


def _global_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()


def test_seeded_augment_makes_timm_randaugment_deterministic():
    from timm.data import rand_augment_transform

    randaug = rand_augment_transform("rand-m9-mstd0.5-inc1", {"img_mean": (124, 116, 104)})
    tf = lambda im: torch.from_numpy(np.array(randaug(im)))  # noqa: E731
    ds = cdata.SeededAugment(_SameImage(tf), seed=7)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    first = ds[2][0]
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    others = [ds[i][0] for i in (5, 3, 0)]
    before = _global_states()
    again = ds[2][0]
    after = _global_states()
    assert torch.equal(first, again)
    assert not any(torch.equal(first, o) for o in others)
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and torch.equal(before[2], after[2])
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], first)
    # the whole timm train pipeline (crop and erasing draw from random and torch) is deterministic too
    full = cdata.SeededAugment(_SameImage(recipe.timm_transform(True, 24, re_prob=1.0)), seed=7)
    a = full[4][0]
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    assert torch.equal(full[4][0], a) and not torch.equal(full[1][0], a)


# ---------------------------------------------------------------- digits demo as an ImageFolder
@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    return cdata.build_demo_imagefolder(str(tmp_path_factory.mktemp("imagefolder")))


def test_demo_imagefolder_layout_counts_and_pixels(demo_folder):
    (xtr, ytr), (xte, yte) = cdata._digits_as_cifar()
    train = cdata.load_imagefolder(demo_folder, "train")
    val = cdata.load_imagefolder(demo_folder, "val")
    assert train.classes == [str(d) for d in range(10)] and len(train) == 1437 and len(val) == 360
    assert np.bincount(train.targets).tolist() == np.bincount(ytr).tolist()
    assert np.bincount(val.targets).tolist() == np.bincount(yte).tolist()
    path, label = val.samples[17]
    index = int(os.path.basename(path)[:-4])
    assert label == yte[index] and np.array_equal(np.asarray(Image.open(path)), xte[index])
    assert cdata.verify_checksums(demo_folder, exhaustive=True) == 1797
    x, _ = cdata.load_imagefolder(demo_folder, "train", cdata.imagenet_transforms(True, size=64))[0]
    assert x.shape == (3, 64, 64)
    assert cdata.build_demo_imagefolder(os.path.dirname(demo_folder)) == demo_folder  # reused, verified


def test_demo_imagefolder_is_byte_identical_and_changes_are_named(demo_folder, tmp_path):
    copy = cdata.build_demo_imagefolder(str(tmp_path))
    with open(os.path.join(copy, "SHA256SUMS"), "rb") as f, open(os.path.join(demo_folder, "SHA256SUMS"), "rb") as g:
        assert f.read() == g.read()
    victim = os.path.join(copy, "train", "3", sorted(os.listdir(os.path.join(copy, "train", "3")))[0])
    with open(victim, "r+b") as f:
        f.seek(40)
        f.write(b"\x00")
    extra = os.path.join(copy, "val", "5", "zzz.png")
    with open(extra, "wb") as f:
        f.write(b"x")
    os.remove(os.path.join(copy, "val", "0", sorted(os.listdir(os.path.join(copy, "val", "0")))[0]))
    with pytest.raises(cdata.DataFileError) as err:
        cdata.build_demo_imagefolder(str(tmp_path))
    msg = str(err.value)
    assert f"changed: {victim}" in msg and f"not in the manifest: {extra}" in msg and "missing: " in msg
    assert "3 file(s)" in msg and "Delete" in msg
    with pytest.raises(cdata.DataFileError, match="zzz"):
        cdata.verify_checksums(copy, {"val/5/zzz.png": "0" * 64})
    cdata.verify_checksums(copy, {"val/5/zzz.png": __import__("hashlib").sha256(b"x").hexdigest()})


def test_missing_imagenet_points_to_the_imagefolder_demo(tmp_path):
    with pytest.raises(cdata.DatasetNotFoundError) as err:
        cdata.load_imagefolder(str(tmp_path), "train")
    msg = str(err.value)
    assert str(tmp_path / "train") in msg and "--demo" in msg and "digits-demo-imagefolder" in msg
    (tmp_path / "val").mkdir()  # a split without class folders: the same message, not a traceback
    with pytest.raises(cdata.DatasetNotFoundError, match="--demo"):
        cdata.load_imagefolder(str(tmp_path), "val")


# ---------------------------------------------------------------- launch modes
def test_examples_dist_flags_and_urls():
    p = D.add_examples_dist_args(argparse.ArgumentParser())
    args = p.parse_args(["--multiprocessing-distributed", "--world-size", "1", "--rank", "0", "--dist-url",
                         "tcp://10.0.0.2:2345", "--local-rank", "3"])
    assert (args.world_size, args.rank, args.dist_backend, args.local_rank) == (1, 0, "nccl", 3)
    assert args.multiprocessing_distributed and D._parse_dist_url(args.dist_url) == ("10.0.0.2", 2345)
    with pytest.raises(ValueError, match="--dist-url"):
        D._parse_dist_url("file:///tmp/x")
    light = D.add_examples_dist_args(argparse.ArgumentParser(), world_size=1, dist_backend="gloo", spawn_flags=False)
    assert not hasattr(light.parse_args([]), "multiprocessing_distributed")
    single = D.launch_examples(lambda env, a: (env.distributed, env.world_size), p.parse_args([]), device="cpu")
    assert single == (False, 1)


def _report(env, args, out_dir):
    total = D.all_reduce_sum(torch.tensor([env.rank + 1.0]))
    info = dict(rank=env.rank, world=env.world_size, local=env.local_rank, dist_rank=dist.get_rank(),
                dist_world=dist.get_world_size(), backend=dist.get_backend(), sum=total.item(),
                env_rank=os.environ["RANK"], url=args.dist_url)
    with open(os.path.join(out_dir, f"rank{env.rank}.json"), "w") as f:
        json.dump(info, f)


def _spawn_main(env, args):
    _report(env, args, args.out_dir)


@pytest.mark.slow
def test_multiprocessing_distributed_spawns_two_gloo_ranks(tmp_path):
    port = D.free_port()
    p = D.add_examples_dist_args(argparse.ArgumentParser())
    args = p.parse_args(["--multiprocessing-distributed", "--world-size", "1", "--rank", "0",
                         "--dist-url", f"tcp://127.0.0.1:{port}"])
    args.out_dir = str(tmp_path)
    D.launch_examples(_spawn_main, args, nprocs=2, device="cpu", timeout=120)
    for r in range(2):
        with open(tmp_path / f"rank{r}.json") as f:
            info = json.load(f)
        assert info == dict(rank=r, world=2, local=r, dist_rank=r, dist_world=2, backend="gloo", sum=3.0,
                            env_rank=str(r), url=f"tcp://127.0.0.1:{port}")


def test_world_size_flag_without_spawn_sets_the_rendezvous(monkeypatch):
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):  # restored afterwards
        monkeypatch.setenv(key, "0")
    seen = {}

    def fake_init(local_rank, device=None, backend=None):
        seen.update({k: os.environ[k] for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")},
                    backend=backend, device=device)
        return D.DistEnv(1, 0, 2, True, torch.device("cpu"))

    monkeypatch.setattr(D, "init_distributed", fake_init)
    monkeypatch.setattr(D, "cleanup", lambda: seen.update(cleaned=True))
    args = D.add_examples_dist_args(argparse.ArgumentParser()).parse_args(
        ["--world-size", "2", "--rank", "1", "--dist-url", "tcp://127.0.0.1:2999"])
    assert D.launch_examples(lambda env, a: env.rank, args, device="cpu") == 1
    assert seen == dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="2999", RANK="1", WORLD_SIZE="2", LOCAL_RANK="0",
                        backend="gloo", device="cpu", cleaned=True)
