"""dwnet/main.py and dwnet/config.py: the yacs config layer, a demo training run on the CPU, ``--eval`` of its
checkpoint, an exact auto-resume, ``--throughput``, a 2-process gloo run, and bad input."""
import math
import os
import re
import shutil

import pytest
import torch
import yaml

from common.config import ConfigError
from common.logging import close_logging
from tests.conftest import ROOT, run_script

from dwnet import config as dconfig
from dwnet import main as dmain

ACC_LINE = re.compile(r"Accuracy of the network on the (\d+) test images: ([\d.]+)%")
TRAIN_LINE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (\S+)\] \(main\.py \d+\): INFO Train: \[(\d+)/(\d+)\]\[(\d+)/(\d+)\]\t"
    r"eta \d+:\d\d:\d\d lr [\d.]+\ttime [\d.]+ \([\d.]+\)\tloss [\d.]+ \([\d.]+\)\t"
    r"grad_norm [\d.]+ \([\d.]+\)\tmem \d+MB$", re.M)

# a small DWNet on 32x32 digits: seconds per epoch on one CPU thread
TINY = ["DATA.IMG_SIZE", "32", "DATA.NUM_WORKERS", "0", "MODEL.DWNET.EMBED_DIM", "16",
        "MODEL.DWNET.DEPTHS", "[1, 1, 1, 1]", "TRAIN.WARMUP_EPOCHS", "1", "PRINT_FREQ", "5"]
NAME = "dwnet_tiny_patch4_window7_224"


def _write_yamls(folder):
    """A parent file and a child that names it with ``BASE:`` (the official tiny config, split in two)."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, "base.yaml")
    child = os.path.join(folder, "dwnet_tiny.yaml")
    with open(base, "w") as f:
        yaml.safe_dump({"MODEL": {"TYPE": "dwnet", "NAME": "will_be_overridden", "DROP_PATH_RATE": 0.2,
                                  "DWNET": {"EMBED_DIM": 96, "DEPTHS": [2, 2, 6, 2], "WINDOW_SIZE": 7}},
                        "TRAIN": {"EPOCHS": 3}}, f)
    with open(child, "w") as f:
        yaml.safe_dump({"BASE": ["base.yaml"], "MODEL": {"NAME": NAME}}, f)
    return child


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("dwnet_main")
    cfg = os.path.join(ROOT, "dwnet", "configs", NAME + ".yaml")  # the shipped tiny config, made tiny by TINY
    yield {"root": str(root), "cfg": cfg, "data": str(root / "data")}
    close_logging()


def _argv(work, *extra, opts=(), tag="default"):
    return ["--cfg", work["cfg"], "--demo", "--data-path", work["data"], "--output",
            os.path.join(work["root"], "out"), "--tag", tag, "--amp-opt-level", "O0", "--batch-size", "64",
            "--device", "cpu", *extra, "--opts", *TINY, *opts]


def _folder(work, tag):
    return os.path.join(work["root"], "out", NAME, tag)


def _log(folder):
    with open(os.path.join(folder, "log_rank0.txt")) as f:
        return f.read()


# ---------------------------------------------------------------------------------------------- config layer
def test_defaults_are_the_official_ones():
    c = dconfig.get_defaults()
    assert c.BASE == [""]
    assert (c.DATA.BATCH_SIZE, c.DATA.IMG_SIZE, c.DATA.INTERPOLATION, c.DATA.NUM_WORKERS) == (128, 224, "bicubic", 8)
    assert (c.MODEL.NUM_CLASSES, c.MODEL.DROP_PATH_RATE, c.MODEL.LABEL_SMOOTHING) == (1000, 0.1, 0.1)
    d = c.MODEL.DWNET
    assert (d.PATCH_SIZE, d.EMBED_DIM, d.DEPTHS, d.WINDOW_SIZE, d.MLP_RATIO) == (4, 96, [2, 2, 6, 2], 7, 4.0)
    assert (d.DYNAMIC, d.INHOMO, d.INHOMO_HEADS, d.APE, d.PATCH_NORM) == (False, False, [4, 8, 16, 32], False, True)
    t = c.TRAIN
    assert (t.EPOCHS, t.WARMUP_EPOCHS, t.WEIGHT_DECAY, t.BASE_LR, t.WARMUP_LR, t.MIN_LR, t.CLIP_GRAD) == \
        (300, 20, 0.05, 5e-4, 5e-7, 5e-6, 5.0)
    assert (t.AUTO_RESUME, t.ACCUMULATION_STEPS, t.LR_SCHEDULER.NAME, t.OPTIMIZER.NAME) == (False, 0, "cosine", "adamw")
    assert tuple(t.OPTIMIZER.BETAS) == (0.9, 0.999) and t.OPTIMIZER.EPS == 1e-8
    a = c.AUG
    assert (a.AUTO_AUGMENT, a.REPROB, a.MIXUP, a.CUTMIX, a.MIXUP_MODE) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0,
                                                                           "batch")
    assert (c.TAG, c.SAVE_FREQ, c.PRINT_FREQ, c.SEED, c.AMP_OPT_LEVEL) == ("default", 1, 10, 0, "")


def _config(argv):
    args, _ = dmain.get_parser().parse_known_args(argv)
    return dconfig.get_config(args)


def test_yaml_with_base_then_opts_then_flags(tmp_path):
    cfg = _write_yamls(str(tmp_path))
    c = _config(["--cfg", cfg])
    # the child's key, the parent's keys, the defaults for the rest; flag defaults applied as officially
    assert c.MODEL.NAME == NAME and c.MODEL.TYPE == "dwnet" and c.MODEL.DWNET.DEPTHS == [2, 2, 6, 2]
    assert c.TRAIN.EPOCHS == 3 and c.MODEL.DWNET.MLP_RATIO == 4.0
    assert c.DATA.BATCH_SIZE == 128 and c.AMP_OPT_LEVEL == "O1"  # the flags' defaults always override
    assert c.OUTPUT == os.path.join("output", NAME, "default") and c.DATA.DATASET == "imagenet"
    assert c.is_frozen()
    c = _config(["--cfg", cfg, "--batch-size", "32", "--data-path", "/d", "--zip", "--cache-mode", "full",
                 "--resume", "r.pth", "--accumulation-steps", "2", "--use-checkpoint", "--amp-opt-level", "O0",
                 "--output", "o", "--tag", "t", "--eval", "--throughput", "--data-set", "CIFAR", "--epoch", "7",
                 "--local_rank", "1", "--opts", "TRAIN.EPOCHS", "5", "MODEL.DWNET.DEPTHS", "[1, 1, 1, 1]",
                 "TRAIN.BASE_LR", "1e-3", "AUG.MIXUP", "0.0"])
    assert (c.DATA.BATCH_SIZE, c.DATA.DATA_PATH, c.DATA.ZIP_MODE, c.DATA.CACHE_MODE) == (32, "/d", True, "full")
    assert (c.MODEL.RESUME, c.TRAIN.ACCUMULATION_STEPS, c.TRAIN.USE_CHECKPOINT, c.AMP_OPT_LEVEL) == \
        ("r.pth", 2, True, "O0")
    assert (c.TAG, c.OUTPUT, c.EVAL_MODE, c.THROUGHPUT_MODE) == ("t", os.path.join("o", NAME, "t"), True, True)
    assert (c.DATA.DATASET, c.LOCAL_RANK) == ("cifar", 1)
    assert c.TRAIN.EPOCHS == 7  # --epoch (not 300) beats --opts, which beats the file
    assert c.MODEL.DWNET.DEPTHS == [1, 1, 1, 1] and c.TRAIN.BASE_LR == 1e-3 and c.AUG.MIXUP == 0.0
    assert _config(["--cfg", cfg, "--epoch", "300", "--opts", "TRAIN.EPOCHS", "5"]).TRAIN.EPOCHS == 5
    # a shipped config by name, as dwnet.config.load_config takes it
    c = _config(["--cfg", "i_dynamic_dwnet_tiny_patch4_window7_224"])
    assert (c.MODEL.TYPE, c.MODEL.DWNET.INHOMO, c.MODEL.DWNET.INHOMO_HEADS) == ("iddwnet", True, [3, 6, 12, 24])
    assert c.AMP_OPT_LEVEL == "O1"  # the file's O0 is overridden by the flag's default, as officially


def test_config_errors_name_the_key_or_file(tmp_path):
    cfg = _write_yamls(str(tmp_path))
    with pytest.raises(ConfigError, match="unknown config key 'TRAIN.NOPE'"):
        _config(["--cfg", cfg, "--opts", "TRAIN.NOPE", "1"])
    with pytest.raises(ConfigError, match="TRAIN.EPOCHS takes a value of type int"):
        _config(["--cfg", cfg, "--opts", "TRAIN.EPOCHS", "many"])
    evil = tmp_path / "evil.yaml"
    evil.write_text("MODEL: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="unknown DWNet config 'dwnet_huge'; shipped configs: dwnet_base"):
        _config(["--cfg", "dwnet_huge"])
    with pytest.raises(ConfigError, match="evil.yaml: refused"):
        _config(["--cfg", str(evil)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  DWNET:\n    KERNEL: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        _config(["--cfg", str(bad)])


def test_linear_lr_scaling_and_amp_mapping(tmp_path):
    cfg = _write_yamls(str(tmp_path))
    c = dmain.scale_lr(_config(["--cfg", cfg, "--batch-size", "64", "--accumulation-steps", "2"]), world_size=4)
    f = 64 * 4 / 512 * 2
    assert (c.TRAIN.BASE_LR, c.TRAIN.WARMUP_LR, c.TRAIN.MIN_LR) == (5e-4 * f, 5e-7 * f, 5e-6 * f)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert dmain.build_amp(_config(["--cfg", cfg, "--amp-opt-level", "O0"]), cuda).dtype is None
    for level in ("O1", "O2"):
        c = _config(["--cfg", cfg, "--amp-opt-level", level])
        assert dmain.build_amp(c, cuda).dtype is torch.float16  # GradScaler: AmpConfig.make_scaler (fp16 only)
        assert dmain.build_amp(c, cpu).dtype is torch.bfloat16
        assert dmain.build_amp(c, cuda, "bfloat16").dtype is torch.bfloat16


def test_optimizer_groups_and_schedule(tmp_path):
    cfg = _write_yamls(str(tmp_path))
    c = dmain.scale_lr(_config(["--cfg", cfg, "--batch-size", "512", "--opts", *TINY[4:10], "TRAIN.EPOCHS", "4"]), 1)
    model = dmain.build_model(c)
    opt = dmain.build_optimizer(c, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-8
    decay = {n for g in opt.param_groups if g["weight_decay"] == 0.05 for n in g["param_names"]}
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    names = dict(model.named_parameters())
    assert decay | no_decay == set(names) and not decay & no_decay
    assert no_decay == {n for n, p in names.items() if p.ndim == 1 or n.endswith(".bias")}  # Swin's rule
    # per-iteration cosine with a linear warm-up from WARMUP_LR over WARMUP_EPOCHS (1 epoch of 10 updates)
    n, epochs, lr, wlr, mlr = 10, 4, 5e-4, 5e-7, 5e-6
    sched = dmain.build_scheduler(c, opt, n)
    for t in (0, 3, 9, 10, 25, 39):
        sched.step_update(num_updates=t)
        cosine = mlr + 0.5 * (lr - mlr) * (1 + math.cos(math.pi * t / (epochs * n)))
        want = wlr + t * (lr - wlr) / n if t < n else cosine
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)


def test_posterize_at_zero_bits_gives_black():
    """rand-m9-mstd0.5-inc1 reaches PosterizeIncreasing with 0 bits; Pillow 13 refuses it, earlier Pillow
    (and this recipe) returns zeros."""
    from PIL import Image
    from timm.data import auto_augment as aa

    from common.train import recipe

    recipe.timm_transform(True, 32)
    img = Image.fromarray(torch.randint(0, 256, (8, 8, 3), dtype=torch.uint8).numpy())
    out = aa.NAME_TO_OP["PosterizeIncreasing"](img, 0)
    assert out.size == img.size and out.mode == img.mode and not any(out.tobytes())
    assert aa.NAME_TO_OP["Posterize"](img, 4).tobytes() == bytes(v & 0xF0 for v in img.tobytes())


# ---------------------------------------------------------------------------------------------- runs on the CPU
@pytest.fixture(scope="module")
def trained(work):
    """Two demo epochs of the tiny model, single process."""
    res = dmain.main(_argv(work, opts=["TRAIN.EPOCHS", "2"]))
    return {"result": res, "folder": _folder(work, "default")}


def test_demo_training_writes_the_official_files(trained):
    folder = trained["folder"]
    assert sorted(os.listdir(folder)) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth", "config.json", "last_checkpoint",
                                          "log_rank0.txt"]
    with open(os.path.join(folder, "last_checkpoint")) as f:
        assert f.read().strip() == "ckpt_epoch_1.pth"
    state = torch.load(os.path.join(folder, "ckpt_epoch_1.pth"), weights_only=True)  # plain data only
    assert set(state) == {"model", "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config"}
    assert state["epoch"] == 1 and state["config"]["MODEL"]["NAME"] == NAME
    assert state["model"]["head.weight"].shape == (10, 128)  # 10 digit classes, 16 * 8 features
    log = _log(folder)
    lines = TRAIN_LINE.findall(log)
    assert [(ep, total, idx, n) for _, ep, total, idx, n in lines] == \
        [(str(e), "2", str(i), "22") for e in (0, 1) for i in (0, 5, 10, 15, 20)]
    assert all(name == NAME for name, *_ in lines)
    accs = [float(a) for n, a in ACC_LINE.findall(log) if n == "360"]
    assert len(accs) == 2 and state["max_accuracy"] == pytest.approx(max(accs), abs=0.05)
    assert trained["result"]["max_accuracy"] == state["max_accuracy"]
    assert re.search(r"INFO  \* Acc@1 [\d.]+ Acc@5 [\d.]+$", log, re.M)
    assert "number of params: " in log and "number of GFLOPs: " in log and "Max accuracy: " in log
    # config.json: the resolved config (YAML text), read back into the defaults
    back = dconfig.load_config(os.path.join(folder, "config.json"))
    assert back == state["config"] and back.TRAIN.EPOCHS == 2 and back.MODEL.NUM_CLASSES == 10
    assert back.TRAIN.BASE_LR == pytest.approx(5e-4 * 64 / 512)


def _plain_accuracy(folder, ckpt_name, cfg):
    """Top-1 of a checkpoint over the demo val split, from a bare loop (the reference)."""
    from common.data import load_imagefolder

    c = dconfig.load_config(os.path.join(folder, "config.json"))
    model = dmain.build_model(c).eval()
    model.load_state_dict(torch.load(os.path.join(folder, ckpt_name), weights_only=True)["model"])
    ds = load_imagefolder(c.DATA.DATA_PATH, "val", transform=dmain.build_transform(False, c))
    correct = 0
    with torch.no_grad():
        for i in range(0, len(ds), 100):
            x = torch.stack([ds[j][0] for j in range(i, min(i + 100, len(ds)))])
            y = torch.tensor([ds[j][1] for j in range(i, min(i + 100, len(ds)))])
            correct += int((model(x).argmax(1) == y).sum())
    return 100.0 * correct / len(ds)


def test_eval_of_the_checkpoint_reproduces_the_logged_accuracy(work, trained):
    folder = trained["folder"]
    logged = [float(a) for _, a in ACC_LINE.findall(_log(folder))]
    res = dmain.main(_argv(work, "--resume", os.path.join(folder, "ckpt_epoch_0.pth"), "--eval", tag="eval"))
    assert res["acc1"] == pytest.approx(_plain_accuracy(folder, "ckpt_epoch_0.pth", work["cfg"]), abs=1e-9)
    assert f"{res['acc1']:.1f}" == f"{logged[0]:.1f}"
    ev = _log(_folder(work, "eval"))
    assert ACC_LINE.search(ev).group(1) == "360" and "Resuming form" in ev
    assert not os.path.exists(os.path.join(_folder(work, "eval"), "config.json"))  # evaluation writes no run files


def test_auto_resume_continues_exactly(work, trained):
    """A run stopped after epoch 0 and auto-resumed equals the uninterrupted run, bit for bit."""
    folder = _folder(work, "resumed")
    os.makedirs(folder)
    shutil.copy(os.path.join(trained["folder"], "ckpt_epoch_0.pth"), folder)
    dmain.main(_argv(work, tag="resumed", opts=["TRAIN.EPOCHS", "2", "TRAIN.AUTO_RESUME", "True"]))
    log = _log(folder)
    assert "auto resuming from" in log and "(epoch 0)" in log
    assert {ep for _, ep, *_ in TRAIN_LINE.findall(log)} == {"1"}
    a = torch.load(os.path.join(trained["folder"], "ckpt_epoch_1.pth"), weights_only=True)
    b = torch.load(os.path.join(folder, "ckpt_epoch_1.pth"), weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["max_accuracy"] == b["max_accuracy"]


def test_throughput(work):
    res = dmain.main(_argv(work, "--throughput", tag="tp"))
    assert res["throughput"] > 0
    assert re.search(r"INFO batch_size 64 throughput [\d.]+$", _log(_folder(work, "tp")), re.M)


def test_official_release_format_loads_safely(work, trained, tmp_path):
    """A release file: {'model': ..., 'config': <pickled yacs CfgNode>} (plus apex 'amp' state in training
    files); read with weights_only through the allow-list, no --trust-checkpoint."""
    state = torch.load(os.path.join(trained["folder"], "ckpt_epoch_1.pth"), weights_only=True)
    release = tmp_path / "dwnet_release.pth"
    torch.save({"model": state["model"], "config": dconfig.load_config(os.path.join(trained["folder"], "config.json"))},
               release)
    res = dmain.main(_argv(work, "--resume", str(release), "--eval", tag="release"))
    assert res["acc1"] == pytest.approx(_plain_accuracy(trained["folder"], "ckpt_epoch_1.pth", work["cfg"]), abs=1e-9)


def test_accumulation_amp_and_cifar_pickles(work, demo_root):
    """--data-set CIFAR (the python pickles, 10 classes), --accumulation-steps 2 (one AdamW update per two
    batches, the LR doubled), --amp-opt-level O1 (bfloat16 autocast on the CPU), --use-checkpoint."""
    argv = _argv(work, "--data-set", "CIFAR", "--accumulation-steps", "2", "--use-checkpoint", tag="accum",
                 opts=["TRAIN.EPOCHS", "1", "MODEL.DWNET.DYNAMIC", "True"])
    argv.remove("--demo")
    argv[argv.index("--data-path") + 1] = demo_root
    argv[argv.index("--amp-opt-level") + 1] = "O1"
    dmain.main(argv)
    state = torch.load(os.path.join(_folder(work, "accum"), "ckpt_epoch_0.pth"), weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {11}  # ceil(22 batches / 2)
    c = state["config"]
    assert (c["DATA"]["DATASET"], c["MODEL"]["NUM_CLASSES"], c["AMP_OPT_LEVEL"]) == ("cifar", 10, "O1")
    assert c["TRAIN"]["BASE_LR"] == pytest.approx(5e-4 * 64 / 512 * 2)
    assert "layers.0.blocks.0.attn2conv.conv.conv1.weight" in state["model"]  # the dynamic variant


# ---------------------------------------------------------------------------------------------- bad input
def _fails(capsys, argv):
    with pytest.raises(SystemExit) as e:
        dmain.cli(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err and err.startswith("error: ")
    return err


def test_zip_mode_gives_the_folder_batches(work):
    """--zip --cache-mode no / full read the demo as train.zip + train_map.txt and give exactly the batches of the
    ImageFolder; --cache-mode part: a process trains on its fixed share and caches just that."""
    from common.distributed import DistEnv

    env = DistEnv(0, 0, 1, False, torch.device("cpu"))
    got = {}
    for mode in (None, "no", "full"):
        extra = () if mode is None else ("--zip", "--cache-mode", mode)
        _, config = dmain.parse_option(_argv(work, *extra))
        assert config.DATA.ZIP_MODE == (mode is not None)
        train_set, val_set, lt, lv, _ = dmain.build_loader(config, env)
        got[mode] = (next(iter(lt)), next(iter(lv)))
        if mode == "full":
            assert len(train_set.dataset.cache) == 1437 and len(val_set.cache) == 360  # val: 'part' of one process
    for mode in ("no", "full"):
        for a, b in zip(got[None], got[mode]):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    _, config = dmain.parse_option(_argv(work, "--zip", "--cache-mode", "part"))
    rank1 = DistEnv(1, 1, 2, False, torch.device("cpu"))
    train_set, val_set, lt, lv, _ = dmain.build_loader(config, rank1)
    share = list(range(1, 1437, 2))[:718]
    assert sorted(train_set.dataset.cache) == share and sorted(lt.sampler) == share
    assert sorted(val_set.cache) == list(lv.sampler) == list(range(180, 360))


def test_missing_data_names_the_layout_and_demo(work, capsys):
    argv = [a for a in _argv(work) if a != "--demo"]
    argv[argv.index("--data-path") + 1] = os.path.join(work["root"], "no_imagenet")
    err = _fails(capsys, argv)
    assert "no_imagenet" in err and "{train,val}/<class>" in err and "--demo" in err
    err = _fails(capsys, argv + ["--zip"])  # the zipped layout: the zip and map file it looked for
    assert os.path.join(work["root"], "no_imagenet", "train.zip") in err and "train_map.txt" in err
    assert "<path inside the zip>" in err and err.count("error: ") == 1


def test_checkpoint_of_another_variant_lists_the_keys(work, trained, tmp_path, capsys):
    c = dconfig.load_config(os.path.join(trained["folder"], "config.json"), ["MODEL.DWNET.DYNAMIC", "True"])
    other = tmp_path / "dynamic.pth"
    torch.save({"model": dmain.build_model(c).state_dict()}, other)
    err = _fails(capsys, _argv(work, "--resume", str(other), "--eval", tag="bad"))
    assert "does not match DWNet" in err and "unexpected keys" in err and "attn2conv.conv.conv1.weight" in err
    assert "missing keys" in err and "attn2conv.conv.weight" in err


def test_other_bad_input_gives_one_message(work, capsys):
    err = _fails(capsys, _argv(work, "--eval", tag="bad"))
    assert "--eval evaluates a checkpoint" in err
    err = _fails(capsys, _argv(work, tag="bad", opts=["TRAIN.NOPE", "1"]))
    assert "unknown config key 'TRAIN.NOPE'" in err
    err = _fails(capsys, _argv(work, tag="bad", opts=["MODEL.TYPE", "swin"]))
    assert "MODEL.TYPE 'swin' is not a DWNet model type" in err
    err = _fails(capsys, _argv(work, "--resume", os.path.join(work["root"], "nope.pth"), "--eval", tag="bad"))
    assert "nope.pth" in err


def test_non_finite_loss_stops_with_one_message(work, capsys):
    opts = ["TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.BASE_LR", "1e38"]  # the weights overflow
    err = _fails(capsys, _argv(work, tag="nan", opts=opts))
    assert "non-finite loss" in err and "Last good checkpoint: (none written yet)" in err


# ---------------------------------------------------------------------------------------------- processes
def _torchrun(work, tag, opts):
    argv = _argv(work, tag=tag, opts=opts)
    argv[argv.index("--batch-size") + 1] = "32"
    proc = run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                       "dwnet/main.py", *argv], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _folder(work, tag)


@pytest.mark.slow
def test_two_gloo_processes_with_torchrun_and_exact_resume(work):
    """torchrun, 2 CPU processes: two demo epochs; the logged accuracy is the exact one over all 360 images;
    a run killed after epoch 0 and resumed (2 processes again) ends with the same weights."""
    opts = ["TRAIN.EPOCHS", "2", "TRAIN.AUTO_RESUME", "True"]
    folder = _torchrun(work, "ddp", opts)
    log = _log(folder)
    with open(os.path.join(folder, "log_rank1.txt")) as f:  # every process writes its own log (Swin's logger)
        log1 = f.read()
    assert len(TRAIN_LINE.findall(log1)) == len(TRAIN_LINE.findall(log)) > 0
    assert {n for _, _, _, _, n in TRAIN_LINE.findall(log)} == {"22"}  # 1437 // (32 * 2) steps
    accs = ACC_LINE.findall(log)
    assert [n for n, _ in accs] == ["360", "360"]
    state = torch.load(os.path.join(folder, "ckpt_epoch_1.pth"), weights_only=True)
    assert state["epoch"] == 1 and state["config"]["TRAIN"]["BASE_LR"] == pytest.approx(5e-4 * 64 / 512)
    assert float(accs[1][1]) == pytest.approx(_plain_accuracy(folder, "ckpt_epoch_1.pth", work["cfg"]), abs=0.05)
    resumed = _folder(work, "ddp_resumed")
    os.makedirs(resumed)
    shutil.copy(os.path.join(folder, "ckpt_epoch_0.pth"), resumed)
    _torchrun(work, "ddp_resumed", opts)
    assert {ep for _, ep, *_ in TRAIN_LINE.findall(_log(resumed))} == {"1"}
    again = torch.load(os.path.join(resumed, "ckpt_epoch_1.pth"), weights_only=True)
    for k in state["model"]:
        assert torch.equal(state["model"][k], again["model"][k]), k
    assert again["max_accuracy"] == state["max_accuracy"]


@pytest.mark.slow
def test_official_eval_command_with_torch_distributed_launch(work, trained):
    """The official README's command: ``python -m torch.distributed.launch --nproc_per_node 1 --master_port
    12345 main.py --cfg ... --resume ... --data-path ... --eval`` (the launcher passes ``--local-rank=0``)."""
    from common.ports import free_port

    ckpt = os.path.join(trained["folder"], "ckpt_epoch_1.pth")
    proc = run_script(["-m", "torch.distributed.launch", "--nproc_per_node", "1", "--master_port", str(free_port()),
                       "dwnet/main.py", *_argv(work, "--resume", ckpt, "--eval", tag="launch")], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (n, acc), = ACC_LINE.findall(proc.stdout)
    want = _plain_accuracy(trained["folder"], "ckpt_epoch_1.pth", work["cfg"])
    assert n == "360" and acc == f"{want:.1f}"
