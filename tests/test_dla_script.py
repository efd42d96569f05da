"""dla/cifar.py end to end on the bundled demo data: the official log.txt, -e on the checkpoint, bad inputs."""
import os

import pytest
import torch

from conftest import run_script

SCRIPT = os.path.join("dla", "cifar.py")
TINY = ["-a", "dla_l", "--depth", "20", "--block-name", "bottleneck", "--train-batch", "96", "--test-batch", "200",
        "--workers", "0", "--manualSeed", "3", "--print-freq", "0"]
HEADER = "Epoch\tLearning Rate\tTrain Loss\tValid Loss\tTrain Acc.\tValid Acc.\t"


def _args(demo_root, ckdir, *extra):
    return [SCRIPT, *TINY, "--demo", "--data-root", os.path.dirname(demo_root), "-c", str(ckdir), *extra]


@pytest.mark.slow
def test_cifar_demo_epoch_log_and_evaluate(demo_root, tmp_path):
    ck = tmp_path / "ck"
    run_script(_args(demo_root, ck, "--epochs", "1", "--drop-path", "0.1"), check=True)
    lines = (ck / "log.txt").read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 2  # the official header, one row per epoch
    assert lines[1].split("\t")[0] == "1" and lines[1].split("\t")[1] == "0.100000"  # the epoch as an integer
    epoch, lr, train_loss, valid_loss, train_acc, valid_acc = [float(x) for x in lines[1].split("\t") if x]
    assert (epoch, lr) == (1.0, 0.1) and 0 < valid_loss and 0 <= valid_acc <= 100
    state = torch.load(ck / "checkpoint.pth.tar", weights_only=True)  # written after epoch 1 (officially: 10)
    assert state["epoch"] == 1 and state["arch"] == "dla_l" and abs(state["best_acc"] - valid_acc) < 1e-5
    assert "module.stages.0.excite.weight" in state["state_dict"] and (ck / "model_best.pth.tar").is_file()
    assert state["args"]["drop_path"] == 0.1 and state["args"]["workers"] == 0
    # -e on the checkpoint reproduces the logged test loss and accuracy
    proc = run_script(_args(demo_root, tmp_path / "eval", "-e", "--resume", str(ck / "checkpoint.pth.tar")),
                      check=True)
    line = [x for x in proc.stdout.splitlines() if x.startswith(" Test Loss:")][0]
    assert abs(float(line.rsplit(":", 1)[1]) - valid_acc) < 0.01
    assert abs(float(line.split(",")[0].split(":")[1]) - valid_loss) < 1e-5


def test_flags_and_dispatch_are_the_official_ones():
    from dla import cifar

    args = cifar.get_parser().parse_args([])
    assert (args.workers, args.drop_path, args.arch, args.block_name, args.depth) == (8, 0.0, "resnet20",
                                                                                       "BasicBlock", 29)
    assert cifar.MODEL_NAMES == ["dia_resnet", "dla_b", "dla_l", "ecanet", "mrla_base", "mrla_light", "resnet",
                                 "senet"]
    args = cifar.get_parser().parse_args(["-a", "dla_b", "--depth", "20", "--block-name", "bottleneck",
                                          "--drop-path", "0.2"])
    assert cifar.model_kwargs(args, 100) == dict(num_classes=100, depth=20, block_name="bottleneck", drop_path=0.2)
    args.arch = "dia_resnet"
    assert cifar.model_kwargs(args, 10) == dict(num_classes=10, depth=20, block_name="bottleneck")
    torch.manual_seed(0)
    model = cifar.build_model(cifar.get_parser().parse_args(["-a", "dla_l", "--depth", "110", "--block-name",
                                                             "bottleneck"]), 100)
    assert sum(p.numel() for p in model.parameters()) == 1_414_668


def test_checkpoint_50_copy_is_dianet_only(monkeypatch):
    from common.train import cifar as skeleton
    from dianet import cifar as dianet_cifar
    from dla import cifar

    calls = []
    monkeypatch.setattr(skeleton, "run", lambda args, build, names, **kw: calls.append(kw))
    cifar.main(["-a", "dla_l"])
    dianet_cifar.main(["-a", "dia_resnet"])
    assert calls[0].get("copies") is None and calls[1]["copies"] is dianet_cifar.official_copies
    assert dianet_cifar.official_copies(50) == ["checkpoint_50.pth.tar"] and dianet_cifar.official_copies(49) == []


def test_bad_arch_and_block_name_are_one_message(demo_root, tmp_path):
    proc = run_script([SCRIPT, "--demo", "-c", str(tmp_path / "a")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown architecture -a 'resnet20'" in proc.stderr and "dla_l" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_script([SCRIPT, "-a", "dla_b", "--depth", "20", "--demo", "--data-root", os.path.dirname(demo_root),
                       "-c", str(tmp_path / "b"), "--workers", "0"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "block_name='basicblock' is not available" in proc.stderr and "--block-name" in proc.stderr


# ------------------------------------------------------------------------------------------------------
# dla/train.py (ImageNet script) on the demo ImageFolder
# ------------------------------------------------------------------------------------------------------
TRAIN = os.path.join("dla", "train.py")
CURVES = ("loss_plot.txt", "valloss_plot.txt", "train_acc1.txt", "train_acc5.txt", "val_acc1.txt", "val_acc5.txt")


def _curve(folder, name):
    return [(int(e), float(v)) for e, v in (line.split() for line in (folder / name).read_text().splitlines())]


@pytest.mark.slow
def test_train_torchrun_two_gloo_processes_then_resume(tmp_path):
    from common.ports import free_port
    from slurm import launch as L

    data, work = tmp_path / "data", tmp_path / "work"
    tiny = [TRAIN, str(data), "--demo", "-a", "resnet50_dla_l", "--img-size", "32", "-b", "16", "-j", "0",
            "--steps-per-epoch", "2", "-p", "0", "--seed", "5", "--work-dir", str(work), "--action", "demo",
            "--wd-la", "0"]
    run_script(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *tiny, "--epochs", "1"],
               check=True)
    run = work / "resnet50_dla_l_demo"
    first = {n: _curve(run, n) for n in CURVES}
    assert all(len(v) == 1 and v[0][0] == 0 for v in first.values())  # rank 0 alone, plain "epoch value"
    state = torch.load(run / "checkpoint.pth.tar", weights_only=True)
    assert state["epoch"] == 1 and isinstance(state["best_acc1"], float) and state["arch"] == "resnet50_dla_l"
    assert abs(state["best_acc1"] - first["val_acc1.txt"][0][1]) < 1e-5
    assert "module.layer1.extict.weight" in state["state_dict"] and "optimizer" in state
    wd = {g["weight_decay"]: g["param_names"] for g in state["optimizer"]["param_groups"]}
    assert set(wd) == {1e-4, 0.0} and all("layer_atten" in n for n in wd[0.0])
    assert not any("layer_atten" in n for n in wd[1e-4]) and any(".lstm." in n for n in wd[1e-4])
    assert (run / "model_best.pth.tar").is_file() and (run / "last_checkpoint").read_text().strip() == \
        "checkpoint.pth.tar"
    # slurm/launch.py finds that checkpoint for the same arguments, and its parser check accepts them
    spec = L.SCRIPTS["dla/train.py"]
    assert L.checkpoint_path(spec, tiny[1:]) == str(run / "checkpoint.pth.tar")
    assert L.validate_script_args(spec, L.REPO_ROOT / spec.path, tiny[1:])

    # resumed through --multiprocessing-distributed (2 spawned gloo processes): continues at epoch 1
    proc = run_script([*tiny, "--epochs", "2", "--resume", str(run / "checkpoint.pth.tar"),
                       "--multiprocessing-distributed", "--nprocs", "2", "--world-size", "1", "--rank", "0",
                       "--dist-url", f"tcp://127.0.0.1:{free_port()}"], check=True)
    assert "Epoch: [1]" in proc.stdout and "Epoch: [0]" not in proc.stdout and "2 processes" in proc.stdout
    second = {n: _curve(run, n) for n in CURVES}
    assert all(second[n][0] == first[n][0] and [e for e, _ in second[n]] == [0, 1] for n in CURVES)
    assert torch.load(run / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2



@pytest.mark.slow
def test_train_foreign_checkpoint_and_nan_loss(tmp_path):
    import dla
    from dla import train

    # a resnet50_dla_l checkpoint in the official layout, given to -a resnet50: one message naming the keys
    model = dla.create_model("resnet50_dla_l", num_classes=10)
    args = train.get_parser().parse_args(["--demo"])
    path = train.checkpointer(tmp_path / "dla").save(model=model, optimizer=train.build_optimizer(model, args),
                                                     epoch=1, best_metric=10.0)
    before = open(path, "rb").read()
    common = [TRAIN, str(tmp_path / "data"), "--demo", "--img-size", "32", "-b", "16", "-j", "0", "-p", "0",
              "--steps-per-epoch", "3", "--seed", "1"]
    proc = run_script([*common, "-a", "resnet50", "--work-dir", str(tmp_path / "w1"), "--resume", path])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "missing keys" in proc.stderr and "unexpected keys" in proc.stderr and "layer1.layers.0." in proc.stderr
    assert open(path, "rb").read() == before and not (tmp_path / "w1").exists()
    # a diverging run stops at the first non-finite loss, naming the step, with nothing half-written
    proc = run_script([*common, "-a", "resnet50_dla_l", "--work-dir", str(tmp_path / "w2"), "--lr", "1e12"])
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "non-finite loss" in proc.stderr and "epoch 0, step" in proc.stderr and "(none written yet)" in proc.stderr
    assert not (tmp_path / "w2" / "resnet50_dla_l_" / "checkpoint.pth.tar").exists()


def test_train_bad_inputs_are_one_message(tmp_path):
    proc = run_script([TRAIN, "--demo", "--work-dir", str(tmp_path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown architecture -a 'dla_50'" in proc.stderr and "resnet50_dla_l" in proc.stderr
    proc = run_script([TRAIN, str(tmp_path / "imagenet"), "-a", "resnet50_dla_l", "--work-dir", str(tmp_path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "imagenet" / "train") in proc.stderr and "--demo" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_flags_are_the_official_ones():
    from dla import train

    a = train.get_parser().parse_args(["/data"])
    assert (a.arch, a.work_dir, a.workers, a.epochs, a.warmup_epochs, a.warmup_lr, a.batch_size, a.lr) == \
        ("dla_50", "work_dirs", 16, 100, 0, 1e-4, 256, 0.1)
    assert (a.momentum, a.weight_decay, a.wd_la, a.drop, a.drop_path, a.print_freq, a.world_size, a.rank) == \
        (0.9, 1e-4, 1e-4, 0.0, 0.2, 10, -1, -1)
    assert (a.dist_url, a.dist_backend, a.seed, a.gpu, a.multiprocessing_distributed, a.action) == \
        ("tcp://127.0.0.1:12345", "nccl", None, None, False, "")
    assert train.run_dir(train.get_parser().parse_args(["/d", "-a", "resnet50", "--action", "x"])) == \
        os.path.join("work_dirs", "resnet50_x")
    # one group when --wd-la equals --wd (as officially), every parameter decayed
    import dla as D

    model = D.create_model("resnet50", num_classes=10, drop_path=0.2)  # the baselines accept drop_path
    opt = train.build_optimizer(model, a)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4]
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


# ------------------------------------------------------------------------------------------------------
# dla/run.sh
# ------------------------------------------------------------------------------------------------------
def _bash(args, **env):
    import subprocess

    from conftest import ROOT

    return subprocess.run(["bash", os.path.join("dla", "run.sh"), *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=60)


def test_run_sh_without_data_says_where_and_the_demo(tmp_path):
    for recipe, where in (("cifar", tmp_path / "cifar-100-python"), ("imagenet", tmp_path / "imagenet" / "train")):
        proc = _bash([recipe], DATA_ROOT=str(tmp_path), IMAGENET=str(tmp_path / "imagenet"))
        assert proc.returncode == 2 and proc.stdout == ""
        assert len(proc.stderr.strip().splitlines()) == 1
        assert str(where) in proc.stderr and "--demo" in proc.stderr


def test_run_sh_commands_are_the_official_ones_and_parse():
    import shlex

    from dla import cifar, train

    proc = _bash(["all"], DRY_RUN="1", DATA_ROOT="datasets", IMAGENET="/data/imagenet", PYTHON="python")
    assert proc.returncode == 0, proc.stderr
    cmds = [shlex.split(line[2:]) for line in proc.stdout.splitlines()]
    assert [c[1] for c in cmds] == ["dla/cifar.py", "dla/cifar.py", "dla/train.py"]
    a = cifar.get_parser().parse_args(cmds[0][2:])
    assert (a.arch, a.depth, a.block_name, a.dataset, a.train_batch, a.lr, a.epochs, a.schedule, a.drop_path,
            a.gamma, a.weight_decay) == ("dla_b", 20, "bottleneck", "cifar100", 128, 0.1, 180, [100, 150], 0.2,
                                         0.1, 1e-4)
    assert a.checkpoint == "checkpoints/cifar100/resnet-20/dla-b-20" and a.data_root == "datasets"
    assert cifar.get_parser().parse_args(cmds[1][2:]).checkpoint == "checkpoints/cifar100/resnet-110/dla-b-110"
    t = train.get_parser().parse_args(cmds[2][2:])
    assert (t.data, t.arch, t.batch_size, t.epochs, t.warmup_epochs, t.world_size, t.rank, t.workers) == \
        ("/data/imagenet", "resnet50_dla_l", 256, 100, 3, 1, 0, 10)


# ------------------------------------------------------------------------------------------------------
# dla/train_pro.py, best.py, eval_visual.py
# ------------------------------------------------------------------------------------------------------
def _official_lr(j, n, scheduler):
    """The official train_pro LR of step j >= 1 (0-based) for 100 epochs of n steps, the base LR 1: its
    schedulers stepped after every step (iters = j), warm-up 5n then cosine over 95n / the first milestone."""
    import math

    if j <= 5 * n:
        return j / (5 * n)
    if scheduler == "cos":
        return (1 + math.cos(math.pi * (j - 5 * n) / (95 * n))) / 2
    return 1.0 if j < 29 * n + 1 else 0.1


def test_train_pro_schedule_matches_the_official_rule():
    from dla import train_pro

    n = 7
    for sched in ("cos", "step"):
        got = [train_pro.lr_factor(j, n, 100, 5, sched) for j in range(1, 59 * n + 1)]
        want = [_official_lr(j, n, sched) for j in range(1, 59 * n + 1)]
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert train_pro.lr_factor(0, n, 100, 5) == 1 / (5 * n)  # officially the full LR (fixed)
    # the step rule goes on decaying (officially stuck at 0.1, then an IndexError after 89n+1)
    assert [train_pro.lr_factor(k * n + 1, n, 100, 5, "step") for k in (29, 59, 89, 99)] == \
        pytest.approx([0.1, 0.01, 0.001, 0.001])
    a = train_pro.get_parser().parse_args(["/d"])
    assert (a.arch, a.scheduler, a.warmup_epochs, a.epochs, a.lr) == ("resnet50_dla_l", "cos", 5, 100, 0.1)


def test_train_pro_scheduler_steps_and_resumes_at_its_position():
    import torch.nn as nn

    from dla import train_pro

    args = train_pro.get_parser().parse_args(["/d", "--epochs", "4", "--warmup-epochs", "1", "--wd-la", "0"])
    steps = 3

    def lrs(start_epoch, count):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=args.lr)
        sched = train_pro.ProRecipe().build_scheduler(opt, args, steps)
        if start_epoch:
            from common.train.imagenet import _position

            _position(sched, start_epoch, steps)
        out = []
        for _ in range(count):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    full = lrs(0, 4 * steps)
    assert full == pytest.approx([0.1 * train_pro.lr_factor(k, steps, 4, 1) for k in range(4 * steps)])
    assert lrs(2, 2 * steps) == pytest.approx(full[2 * steps:])


def test_train_pro_label_smoothing_is_the_official_loss():
    from dla import train_pro

    torch.manual_seed(0)
    logits, target = torch.randn(5, 10, dtype=torch.float64), torch.randint(0, 10, (5,))
    crit = train_pro.ProRecipe().build_criterion(None, 10)
    q = torch.full((5, 10), 0.1 / 10, dtype=torch.float64)
    q[range(5), target] += 0.9
    want = sum(-(q[b] * torch.log_softmax(logits[b], 0)).sum() for b in range(5)) / 5
    assert abs(float(crit(logits, target)) - float(want)) < 1e-12


@pytest.mark.slow
def test_train_pro_demo_run_logs_lr_and_official_lines(tmp_path):
    from dla import train_pro

    work = tmp_path / "w"
    proc = run_script([os.path.join("dla", "train_pro.py"), str(tmp_path / "data"), "--demo", "-a", "resnet50",
                       "--img-size", "32", "-b", "32", "-j", "0", "--steps-per-epoch", "3", "-p", "2", "--seed", "0",
                       "--epochs", "2", "--warmup-epochs", "1", "--work-dir", str(work)], check=True)
    run = work / "resnet50_"
    lr = _curve(run, "lr_plot.txt")
    assert lr == [(0, pytest.approx(0.1 * train_pro.lr_factor(3, 3, 2, 1))),
                  (1, pytest.approx(0.1 * train_pro.lr_factor(6, 3, 2, 1)))]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("Epoch: [1][")]
    assert [ln.split("\t")[0] for ln in lines] == ["Epoch: [1][0/3]", "Epoch: [1][2/3]"]
    assert lines[0].split("\t")[1] == "LR %.5f" % (0.1 * train_pro.lr_factor(4, 3, 2, 1))  # after step 3
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith(" * Acc@1")]
    assert len(summary) == 2 and float(summary[-1].split()[-1]) == pytest.approx(_curve(run, "valloss_plot.txt")[1][1],
                                                                                  abs=1e-4)
    for png in ("acc1_plot.png", "acc5_plot.png", "loss_plot.png", "lr_plot.png"):
        assert (run / png).is_file(), png


def _official_dla_logs(folder, fmt="tensor({}, device='cuda:0')"):
    folder.mkdir(parents=True)
    vals = {"train_acc1.txt": [10.0, 30.0, 50.0], "train_acc5.txt": [40.0, 60.0, 80.0],
            "val_acc1.txt": [12.0, 35.5, 35.5], "val_acc5.txt": [45.0, 70.25, 71.0],
            "loss_plot.txt": [2.5, 1.75, 1.25], "valloss_plot.txt": [2.25, 1.5, 1.375]}
    for name, vs in vals.items():
        acc = "acc" in name
        (folder / name).write_text("".join(f"{e} {fmt.format(v) if acc else v}\n" for e, v in enumerate(vs)))
    return vals


@pytest.mark.parametrize("fmt", ["tensor({}, device='cuda:0')", "{}"])
def test_best_writes_the_official_files(tmp_path, capsys, fmt):
    from dla import best

    vals = _official_dla_logs(tmp_path / "resnet50_dla_l_", fmt)
    lines = best.main(["--work-dir", str(tmp_path)])  # the default -ld: resnet50_dla_l_
    assert lines == ["* best Top-1 at epoch 1: Acc@1: 35.500, Acc@5: 70.250, Err@1: 64.500, Err@5: 29.750",
                     "* best Top-5 at epoch 2: Acc@1: 35.500, Acc@5: 71.000, Err@1: 64.500, Err@5: 29.000"]
    folder = tmp_path / "resnet50_dla_l_"
    assert (folder / "best.txt").read_text() == "".join(x + " \n" for x in lines)
    csv_rows = (folder / "log.csv").read_text().splitlines()
    assert csv_rows[0] == "epoch,train_acc1,train_acc5,val_acc1,val_acc5,train_loss,val_loss"
    assert [float(x) for x in csv_rows[2].split(",")] == [1, 30.0, 60.0, 35.5, 70.25, 1.75, 1.5]
    assert (folder / "log.txt").read_text().splitlines()[0] == \
        "0 train_Acc@1 10.000 train_Acc@5 40.000 Acc@1 12.000 Acc@5 45.000 train_Loss 2.5000 Loss 2.2500 "
    out = capsys.readouterr().out
    assert lines[0] in out and "-" * 80 in out
    assert vals["val_acc1.txt"][1] == 35.5


def test_best_and_eval_visual_bad_logs_are_one_message(tmp_path, capsys):
    from dla import best, eval_visual

    folder = tmp_path / "run_"
    _official_dla_logs(folder)
    (folder / "val_acc5.txt").write_text("0 1.0\n")
    for fn in (best.main,):
        with pytest.raises(SystemExit) as info:
            fn(["--work-dir", str(tmp_path), "-ld", "run_"])
        assert info.value.code == 2 and "val_acc5.txt" in capsys.readouterr().err
    (folder / "val_acc1.txt").write_text("0 tensor(oops\n")
    with pytest.raises(SystemExit) as info:
        eval_visual.main(["--work-dir", str(tmp_path), "-ld", "run_"])
    assert info.value.code == 2 and "val_acc1.txt, line 1" in capsys.readouterr().err


def test_eval_visual_plots_official_logs(tmp_path):
    from dla import eval_visual

    vals = _official_dla_logs(tmp_path / "resnet50_dla_l_")
    figs = eval_visual.main(["--work-dir", str(tmp_path)])
    folder = str(tmp_path / "resnet50_dla_l_")
    assert sorted(os.path.basename(p) for p in figs) == ["acc1_plot.png", "acc5_plot.png", "loss_plot.png"]

    def ydata(png, label):
        (line,) = [ln for ln in figs[os.path.join(folder, png)].axes[0].lines if ln.get_label() == label]
        return list(line.get_xdata()), [float(y) for y in line.get_ydata()]

    assert ydata("acc1_plot.png", "validation") == ([0, 1, 2], vals["val_acc1.txt"])
    assert ydata("acc5_plot.png", "training") == ([0, 1, 2], vals["train_acc5.txt"])
    assert ydata("loss_plot.png", "training")[1] == vals["loss_plot.txt"]
    assert ydata("loss_plot.png", "validation")[1] == vals["valloss_plot.txt"]
    for p in figs:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
