"""rlanet/train.py, train_light.py, paras_flops.py and eval_visual.py on the bundled digits ImageFolder:
one epoch and its logs, -e, resume, DDP, the LR rules, the counts, the plots, bad inputs."""
import json
import os

import pytest
import torch

from conftest import ROOT, run_script

TINY = ["-a", "dsrla_mobilenetv2_k6", "--image-size", "32", "-j", "0", "-b", "64", "-p", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    from common.data import build_demo_imagefolder

    root = tmp_path_factory.mktemp("rla_data")
    build_demo_imagefolder(str(root))
    return str(root)


@pytest.fixture(scope="module")
def one_epoch(demo_dir, tmp_path_factory):
    """One demo epoch of train.py in this process: (work dir, run folder, returned result)."""
    from rlanet import train

    wd = tmp_path_factory.mktemp("rla_wd")
    res = train.main([*TINY, "--demo", demo_dir, "--work-dir", str(wd), "--epochs", "1"])
    return str(wd), os.path.join(str(wd), "dsrla_mobilenetv2_k6_"), res


def _curve(folder, name):
    with open(os.path.join(folder, name)) as f:
        return [(int(a), float(b)) for a, b in (ln.split() for ln in f.read().splitlines())]


def _plain_accuracy(state_dict, demo_dir):
    """Top-1 / top-5 of a checkpoint over the demo val split, by a plain float64 loop (no common.engine)."""
    import rlanet
    from common.data import imagenet_transforms, load_imagefolder

    model = rlanet.create_model("dsrla_mobilenetv2_k6", num_classes=10)
    model.load_state_dict({k[len("module."):]: v for k, v in state_dict.items()})
    model.eval()
    val = load_imagefolder(os.path.join(demo_dir, "digits-demo-imagefolder"), "val",
                           imagenet_transforms(False, 32, 37))
    hit1 = hit5 = 0
    with torch.no_grad():
        for i in range(0, len(val), 90):
            xs, ys = zip(*(val[j] for j in range(i, min(i + 90, len(val)))))
            top = model(torch.stack(xs)).topk(5, 1).indices
            y = torch.tensor(ys)[:, None]
            hit1 += int((top[:, :1] == y).sum())
            hit5 += int((top == y).sum())
    return 100.0 * hit1 / len(val), 100.0 * hit5 / len(val)


def test_one_epoch_layout_logs_and_checkpoint(one_epoch, demo_dir):
    _, folder, res = one_epoch
    for name in ("checkpoint.pth.tar", "model_best.pth.tar", "last_checkpoint", "log.jsonl", "acc1_plot.png",
                 "acc5_plot.png", "loss_plot.png"):
        assert os.path.isfile(os.path.join(folder, name)), name
    assert open(os.path.join(folder, "last_checkpoint")).read().strip() == "checkpoint.pth.tar"
    from common.config import read_yaml

    flags = read_yaml(os.path.join(folder, "config.yaml"))
    assert (flags["arch"], flags["epochs"], flags["image_size"], flags["kind"]) == \
        ("dsrla_mobilenetv2_k6", 1, 32, "train")
    state = torch.load(os.path.join(folder, "checkpoint.pth.tar"), weights_only=True)
    assert state["epoch"] == 1 and state["arch"] == "dsrla_mobilenetv2_k6" and state["seed"] == 3
    assert all(k.startswith("module.") for k in state["state_dict"])
    assert isinstance(state["best_acc1"], float) and state["best_acc1"] == res["best_acc1"]
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.1  # epoch 0 of 0.1 * 0.1 ** (epoch // 30)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    assert state["optimizer"]["param_groups"][0]["nesterov"] is False
    # the curve logs: "{epoch} {plain number}" lines, the same values as log.jsonl
    record = json.loads(open(os.path.join(folder, "log.jsonl")).read())
    for name, key in (("loss_plot.txt", "train_loss"), ("train_acc1.txt", "train_top1"),
                      ("train_acc5.txt", "train_top5"), ("val_acc1.txt", "test_top1"), ("val_acc5.txt", "test_top5")):
        assert _curve(folder, name) == [(0, record[key])], name
    # the logged validation accuracy is that of the saved weights, recomputed independently
    top1, top5 = _plain_accuracy(state["state_dict"], demo_dir)
    assert abs(record["test_top1"] - top1) < 1e-9 and abs(record["test_top5"] - top5) < 1e-9
    assert record["test_top1"] == state["best_acc1"]


def test_evaluate_reproduces_logged_accuracy(one_epoch, demo_dir, capsys):
    from rlanet import train

    wd, folder, _ = one_epoch
    res = train.main([*TINY, "--demo", demo_dir, "--work-dir", wd, "-e",
                      "--resume", os.path.join(folder, "model_best.pth.tar")])
    assert (0, res["top1"]) == _curve(folder, "val_acc1.txt")[0]
    assert (0, res["top5"]) == _curve(folder, "val_acc5.txt")[0]
    assert f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}" in capsys.readouterr().out
    assert _curve(folder, "val_acc1.txt") == [(0, res["top1"])]  # -e leaves the logs alone
    # a checkpoint in the official train.py's layout: best_acc1 a tensor, plain SGD state, no RNG state or seed
    import rlanet

    ours = torch.load(os.path.join(folder, "checkpoint.pth.tar"), weights_only=True)
    model = rlanet.create_model("dsrla_mobilenetv2_k6", num_classes=10)
    official = {"epoch": 1, "arch": "dsrla_mobilenetv2_k6", "state_dict": ours["state_dict"],
                "best_acc1": torch.tensor(res["top1"]),
                "optimizer": torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4).state_dict()}
    torch.save(official, os.path.join(wd, "official.pth.tar"))
    again = train.main([*TINY, "--demo", demo_dir, "--work-dir", wd, "-e",
                        "--resume", os.path.join(wd, "official.pth.tar")])
    assert (again["top1"], again["top5"]) == (res["top1"], res["top5"])


@pytest.mark.slow
def test_resume_after_kill_continues_exactly(one_epoch, demo_dir, tmp_path):
    """A run killed during its second epoch, resumed from last_checkpoint, ends as the uninterrupted run."""
    import signal
    import subprocess
    import sys

    from common.checkpoint import find_last_checkpoint

    wd, folder, _ = one_epoch
    cut = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, os.path.join("rlanet", "train.py"), *TINY, "-p", "1", "--demo", demo_dir,
                             "--work-dir", str(cut), "--epochs", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = False
    for line in proc.stdout:
        seen = seen or line.startswith("Epoch: [1]")
        if line.startswith("Epoch: [1][3/"):  # the official progress line of batch 3 of epoch 1
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(60)
    assert seen, "the run never reached its second epoch"
    resumed = str(cut / "dsrla_mobilenetv2_k6_")
    ckpt = find_last_checkpoint(resumed)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    with open(os.path.join(resumed, "val_acc1.txt"), "a") as f:
        f.write("1 99.0\n")  # a line of the epoch that was cut short: dropped on resume
    from rlanet import train

    train.main([*TINY, "--demo", demo_dir, "--work-dir", str(cut), "--epochs", "2", "--resume", ckpt])
    train.main([*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path / "full"), "--epochs", "2"])
    full = str(tmp_path / "full" / "dsrla_mobilenetv2_k6_")
    a = torch.load(os.path.join(resumed, "checkpoint.pth.tar"), weights_only=True)
    b = torch.load(os.path.join(full, "checkpoint.pth.tar"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k
    for name in ("loss_plot.txt", "val_acc1.txt", "train_acc5.txt"):
        assert _curve(resumed, name) == _curve(full, name)
        assert [e for e, _ in _curve(resumed, name)] == [0, 1]
    assert _curve(resumed, "val_acc1.txt")[0] == _curve(folder, "val_acc1.txt")[0]  # epoch 0 as in one_epoch


@pytest.mark.slow
def test_multiprocessing_distributed_two_gloo_processes(demo_dir, tmp_path):
    """--multiprocessing-distributed with 2 CPU gloo processes (each takes half of -b), sync-BN on."""
    from common.ports import free_port

    proc = run_script([os.path.join("rlanet", "train.py"), *TINY, "--demo", demo_dir, "--work-dir", str(tmp_path),
                       "--epochs", "1", "--multiprocessing-distributed", "--nprocs", "2", "--world-size", "1",
                       "--rank", "0", "--dist-url", f"tcp://127.0.0.1:{free_port()}", "--sync-bn"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = str(tmp_path / "dsrla_mobilenetv2_k6_")
    state = torch.load(os.path.join(run, "checkpoint.pth.tar"), weights_only=True)
    assert state["epoch"] == 1 and all(k.startswith("module.") for k in state["state_dict"])
    for name in ("loss_plot.txt", "train_acc1.txt", "val_acc1.txt"):  # rank 0 only: one line each
        assert [e for e, _ in _curve(run, name)] == [0]
    # the validation shards of the two processes add up to the whole set: the logged accuracy is the saved
    # weights' accuracy over all 360 images (dropout draws differ from one process, so no equality with it)
    top1, top5 = _plain_accuracy(state["state_dict"], demo_dir)
    assert abs(_curve(run, "val_acc1.txt")[0][1] - top1) < 1e-9 and abs(_curve(run, "val_acc5.txt")[0][1] - top5) < 1e-9
    assert state["best_acc1"] == _curve(run, "val_acc1.txt")[0][1]


@pytest.mark.slow
@pytest.mark.parametrize("script, extra", [("train_light.py", []), ("train.py", ["--multiprocessing-distributed"])])
def test_torchrun_two_processes(demo_dir, tmp_path, script, extra):
    """torchrun starts the processes; train.py's --multiprocessing-distributed does not spawn again under it."""
    from common.ports import free_port

    proc = run_script(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                       os.path.join("rlanet", script), *TINY, "--demo", demo_dir, "--work-dir", str(tmp_path),
                       "--epochs", "1", "--action", script[:-3], *extra], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = str(tmp_path / f"dsrla_mobilenetv2_k6_{script[:-3]}")
    state = torch.load(os.path.join(run, "checkpoint.pth.tar"), weights_only=True)
    assert state["epoch"] == 1
    top1, _ = _plain_accuracy(state["state_dict"], demo_dir)
    assert _curve(run, "val_acc1.txt") == [(0, top1)]
    assert state["optimizer"]["param_groups"][0]["lr"] == (0.045 if script == "train_light.py" else 0.1)


def test_lr_rules_and_light_defaults():
    from rlanet import train, train_light

    args = train.get_parser().parse_args([])
    assert [train.lr_at(args, e) for e in (0, 29, 30, 59, 60, 119)] == \
        [0.1, 0.1, 0.1 * 0.1, 0.1 * 0.1, 0.1 * 0.1 ** 2, 0.1 * 0.1 ** 3]
    assert (args.arch, args.epochs, args.batch_size, args.weight_decay, args.workers, args.print_freq,
            args.world_size, args.rank, args.dist_backend) == ("rla_resnet50", 120, 256, 1e-4, 16, 10, -1, -1, "nccl")
    light = train_light.get_parser().parse_args([])
    for e in range(0, 400, 37):
        assert abs(train.lr_at(light, e) - 0.045 * 0.98 ** e) <= 1e-15 * 0.045
    assert (light.arch, light.epochs, light.batch_size, light.lr, light.weight_decay, light.workers,
            light.print_freq, light.world_size, light.dist_backend) == \
        ("dsrla_mobilenetv2", 400, 96, 0.045, 4e-5, 12, 50, 1, "gloo")
    assert not hasattr(light, "rank") and not hasattr(light, "multiprocessing_distributed")
    with pytest.raises(SystemExit):
        train_light.get_parser().parse_args(["--multiprocessing-distributed"])


def test_train_light_tiny_run(demo_dir, tmp_path):
    from rlanet import train_light

    train_light.main([*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path), "--start-epoch", "3", "--epochs", "4",
                      "--action", "light"])
    folder = str(tmp_path / "dsrla_mobilenetv2_k6_light")
    state = torch.load(os.path.join(folder, "checkpoint.pth.tar"), weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert state["epoch"] == 4 and state["arch"] == "dsrla_mobilenetv2_k6"
    assert group["lr"] == 0.045 * 0.98 ** 3 and group["weight_decay"] == 4e-5
    record = json.loads(open(os.path.join(folder, "log.jsonl")).read())
    assert record["epoch"] == 3 and record["lr"] == 0.045 * 0.98 ** 3
    assert _curve(folder, "val_acc1.txt") == [(3, record["test_top1"])]


def test_paras_flops_matches_shared_counter(capsys):
    import rlanet
    from common.flops import count_flops, count_params
    from rlanet import paras_flops

    out = paras_flops.main(["-a", "dsrla_mobilenetv2", "-i", "64", "--no-print-model"])
    text = capsys.readouterr().out.strip().splitlines()
    model = rlanet.create_model("dsrla_mobilenetv2")
    params, flops = count_params(model), count_flops(model, torch.randn(1, 3, 64, 64))
    assert params == 3_624_168  # the official model's count (one shared recurrent conv)
    assert out == {"params": params, "flops": flops}
    assert text[-3] == f"{flops} {params}"
    assert text[-2] == f"{paras_flops.clever_format(flops)} {paras_flops.clever_format(params)}"
    assert text[-1] == (f"dsrla_mobilenetv2: params {params} (3.456M), FLOPs {flops} "
                        f"({paras_flops.clever_format(flops)}) at 1x3x64x64")
    assert paras_flops.clever_format(25_870_696) == "24.672M"  # the README's 24.67M for rla_resnet50
    assert paras_flops.clever_format(4_150_000_000) == "%.3fG" % (4.15e9 / 2 ** 30)
    assert paras_flops.clever_format(999) == "999.000B"


def _write_official_logs(folder, fmt):
    os.makedirs(folder, exist_ok=True)
    values = {"train_acc1.txt": [10.5, 30.25, 45.0], "val_acc1.txt": [12.0, 33.5, 47.75],
              "train_acc5.txt": [40.0, 60.0, 70.5], "val_acc5.txt": [42.0, 63.0, 72.25],
              "loss_plot.txt": [2.5, 1.75, 1.25]}
    for name, vals in values.items():
        with open(os.path.join(folder, name), "w") as f:
            for e, v in enumerate(vals):
                f.write(f"{e} {v}\n" if name == "loss_plot.txt" else f"{e} {fmt.format(v)}\n")
    return values


def _ydata(fig, label):
    (line,) = [ln for ln in fig.axes[0].lines if ln.get_label() == label]
    return list(line.get_xdata()), [float(y) for y in line.get_ydata()]


@pytest.mark.parametrize("fmt", ["tensor({}, device='cuda:0')", "tensor({})", "{}"])
def test_eval_visual_reads_official_and_plain_logs(tmp_path, fmt):
    from rlanet import eval_visual

    values = _write_official_logs(str(tmp_path / "rla_resnet50_"), fmt)
    figures = eval_visual.main(["--work-dir", str(tmp_path), "-ld", "rla_resnet50_"])
    folder = str(tmp_path / "rla_resnet50_")
    assert sorted(os.path.basename(p) for p in figures) == ["acc1_plot.png", "acc5_plot.png", "loss_plot.png"]
    for path in figures:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    fig = figures[os.path.join(folder, "acc1_plot.png")]
    assert _ydata(fig, "training") == ([0, 1, 2], values["train_acc1.txt"])
    assert _ydata(fig, "validation") == ([0, 1, 2], values["val_acc1.txt"])
    assert _ydata(figures[os.path.join(folder, "acc5_plot.png")], "validation")[1] == values["val_acc5.txt"]
    assert _ydata(figures[os.path.join(folder, "loss_plot.png")], "training")[1] == values["loss_plot.txt"]


def test_eval_visual_plots_a_train_run(one_epoch):
    from rlanet import eval_visual

    wd, folder, _ = one_epoch
    figures = eval_visual.plot_log_dir(folder, out_dir=os.path.join(wd, "pngs"))
    record = json.loads(open(os.path.join(folder, "log.jsonl")).read())
    fig = figures[os.path.join(wd, "pngs", "acc1_plot.png")]
    assert _ydata(fig, "validation") == ([0], [record["test_top1"]])
    assert _ydata(figures[os.path.join(wd, "pngs", "loss_plot.png")], "training") == ([0], [record["train_loss"]])


# ---------------------------------------------------------------- bad input: one message, exit 2
def _fails(capsys, fn, argv):
    with pytest.raises(SystemExit) as info:
        fn(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_data_names_layout_and_demo(tmp_path, capsys):
    from rlanet import train

    err = _fails(capsys, train.run_cli, [*TINY, str(tmp_path / "nowhere"), "--work-dir", str(tmp_path)])
    assert str(tmp_path / "nowhere" / "train") in err and "{train,val}/<class>" in err and "--demo" in err
    err = _fails(capsys, train.run_cli, [*TINY, "--work-dir", str(tmp_path)])
    assert "DIR/{train,val}" in err and "--demo" in err


def test_unknown_arch_lists_names(tmp_path):
    proc = run_script([os.path.join("rlanet", "train.py"), "-a", "rla_resnet51", "--demo"], cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "invalid choice: 'rla_resnet51'" in proc.stderr and "rla_resnet50" in proc.stderr
    assert "dsrla_mobilenetv2" in proc.stderr


def test_foreign_checkpoint_lists_keys(demo_dir, tmp_path, capsys):
    from rlanet import train

    bad = tmp_path / "foreign.pth.tar"
    torch.save({"epoch": 3, "state_dict": {"module.backbone.conv.weight": torch.zeros(2)}}, bad)
    err = _fails(capsys, train.run_cli, [*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path), "--resume", str(bad)])
    assert str(bad) in err and "missing keys" in err and "unexpected keys" in err
    assert "backbone.conv.weight" in err and "conv1.0.weight" in err
    err = _fails(capsys, train.run_cli, [*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path),
                                         "--resume", str(tmp_path / "none.pth.tar")])
    assert "checkpoint not found" in err and "none.pth.tar" in err
    # the same checks before --multiprocessing-distributed starts its processes
    spawn = ["--multiprocessing-distributed", "--nprocs", "2", "--world-size", "1", "--rank", "0"]
    err = _fails(capsys, train.run_cli, [*TINY, *spawn, "--demo", demo_dir, "--work-dir", str(tmp_path),
                                         "--resume", str(bad)])
    assert str(bad) in err and "missing keys" in err and "backbone.conv.weight" in err
    err = _fails(capsys, train.run_cli, [*TINY, *spawn, str(tmp_path / "nowhere"), "--work-dir", str(tmp_path)])
    assert "{train,val}/<class>" in err and "--demo" in err


def test_bad_rla_flag_and_bad_logs(tmp_path, capsys):
    from rlanet import eval_visual, train

    err = _fails(capsys, train.run_cli, ["-a", "mobilenet_v2", "--rla", "8", "--demo", str(tmp_path / "d"),
                                         "--work-dir", str(tmp_path), "--image-size", "32", "-j", "0"])
    assert "-a mobilenet_v2" in err and "--rla" in err
    err = _fails(capsys, train.run_cli, [*TINY, "--demo", str(tmp_path / "d"), "--world-size", "2", "--rank", "0",
                                         "--dist-url", "127.0.0.1:23456"])
    assert "--dist-url must be tcp://HOST:PORT" in err and "'127.0.0.1:23456'" in err
    folder = tmp_path / "wd" / "run_"
    folder.mkdir(parents=True)
    (folder / "val_acc1.txt").write_text("0 12.5\n1 tensor(oops\n")
    err = _fails(capsys, eval_visual.main, ["--work-dir", str(tmp_path / "wd"), "-ld", "run_"])
    assert "val_acc1.txt, line 2" in err
    err = _fails(capsys, eval_visual.main, ["--work-dir", str(tmp_path / "wd"), "-ld", "absent_"])
    assert "absent_" in err


def test_pretrained_conv1_copies_and_freezes(monkeypatch):
    """-pre: the torchvision model's first conv (stand-in weights here: no network in tests) is copied into the
    variant's first conv and frozen; the optimizer leaves it out."""
    import torchvision

    import rlanet
    from common.train import recipe
    from rlanet import train

    asked = []

    class Source(torch.nn.Module):
        def state_dict(self):
            return {"features.0.0.weight": torch.arange(32 * 27.0).reshape(32, 3, 3, 3)}

    monkeypatch.setattr(torchvision.models, "get_model",
                        lambda name, weights: asked.append((name, weights)) or Source())
    model = rlanet.create_model("dsrla_mobilenetv2_k6", num_classes=10)
    train.copy_pretrained_conv1(model, "dsrla_mobilenetv2_k6", log=lambda *a: None)
    assert asked == [("mobilenet_v2", "DEFAULT")]
    assert torch.equal(model.conv1[0].weight, torch.arange(32 * 27.0).reshape(32, 3, 3, 3))
    assert not model.conv1[0].weight.requires_grad
    opt = recipe.build_optimizer(model, "momentum", 0.1, 1e-4, filter_bias_and_bn=False, no_weight_decay=())
    assert "conv1.0.weight" not in [n for g in opt.param_groups for n in g["param_names"]]
    assert train._torchvision_source("rla_resnext101_32x4d_se") == ("resnext101_32x8d", "conv1.weight")
    assert train._torchvision_source("rla_resnet152_eca") == ("resnet152", "conv1.weight")


def test_best_reads_both_formats(tmp_path, capsys):
    from rlanet import best

    folder = tmp_path / "rla_resnet50_"
    folder.mkdir()
    (folder / "val_acc1.txt").write_text("0 tensor(12.5, device='cuda:0')\n1 tensor(47.75, device='cuda:0')\n"
                                         "2 tensor(47.75, device='cuda:0')\n3 tensor(40.0, device='cuda:0')\n")
    (folder / "val_acc5.txt").write_text("0 60.0\n1 59.0\n2 72.25\n")
    lines = best.main(["--work-dir", str(tmp_path), "-ld", "rla_resnet50_"])
    assert lines == ["Acc@1:47.75 epoch:1", "Acc@5:72.25 epoch:2", f"Err@1:{100 - 47.75}", f"Err@5:{100 - 72.25}"]
    assert (folder / "best.txt").read_text().splitlines() == lines
    assert capsys.readouterr().out.splitlines() == lines
    (folder / "val_acc5.txt").unlink()
    err = _fails(capsys, best.main, ["--work-dir", str(tmp_path), "-ld", "rla_resnet50_"])
    assert "val_acc5.txt" in err


def test_train_light_resume_continues_exactly(demo_dir, tmp_path):
    """train_light.py (its own LR rule, 0.045 * 0.98^epoch): a run stopped after epoch 1 and resumed from its
    last_checkpoint ends with the weights and curve logs of the uninterrupted 2-epoch run (the kill itself is
    exercised on train.py, which shares the script skeleton)."""
    from common.checkpoint import find_last_checkpoint
    from rlanet import train_light

    train_light.main([*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path / "cut"), "--epochs", "1"])
    cut = str(tmp_path / "cut" / "dsrla_mobilenetv2_k6_")
    train_light.main([*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path / "cut"), "--epochs", "2",
                      "--resume", find_last_checkpoint(cut)])
    train_light.main([*TINY, "--demo", demo_dir, "--work-dir", str(tmp_path / "full"), "--epochs", "2"])
    full = str(tmp_path / "full" / "dsrla_mobilenetv2_k6_")
    a = torch.load(os.path.join(cut, "checkpoint.pth.tar"), weights_only=True)
    b = torch.load(os.path.join(full, "checkpoint.pth.tar"), weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == 0.045 * 0.98
    for k, v in b["state_dict"].items():
        assert torch.equal(a["state_dict"][k], v), k
    for name in ("loss_plot.txt", "val_acc1.txt"):
        assert _curve(cut, name) == _curve(full, name)
        assert [e for e, _ in _curve(cut, name)] == [0, 1]
