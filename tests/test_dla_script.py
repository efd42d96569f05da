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


def test_bad_arch_and_block_name_are_one_message(demo_root, tmp_path):
    proc = run_script([SCRIPT, "--demo", "-c", str(tmp_path / "a")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown architecture -a 'resnet20'" in proc.stderr and "dla_l" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run_script([SCRIPT, "-a", "dla_b", "--depth", "20", "--demo", "--data-root", os.path.dirname(demo_root),
                       "-c", str(tmp_path / "b"), "--workers", "0"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "block_name='basicblock' is not available" in proc.stderr and "--block-name" in proc.stderr
