"""dwnet/scripts/run_<config>.sh: the six official training scripts (DRY_RUN=1 prints the command, which
dwnet/main.py's parser reads back), their variables, the eval mode, and one real CPU run through each launcher."""
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import ROOT

from dwnet import main as dmain

SCRIPTS = os.path.join(ROOT, "dwnet", "scripts")
# config: (nodes, batch per GPU, accumulation steps, AMP level), as the official scripts (i_dynamic base fixed)
OFFICIAL = {
    "dwnet_tiny_patch4_window7_224": (1, 128, None, "O1"),
    "dynamic_dwnet_tiny_patch4_window7_224": (1, 128, None, "O1"),
    "i_dynamic_dwnet_tiny_patch4_window7_224": (1, 64, 2, "O0"),
    "dwnet_base_patch4_window7_224": (2, 64, 2, "O1"),
    "dynamic_dwnet_base_patch4_window7_224": (2, 64, 2, "O1"),
    "i_dynamic_dwnet_base_patch4_window7_224": (2, 64, 2, "O0"),
}
CLEAN = ("DATA_PATH", "OUTPUT", "MODE", "RESUME", "LAUNCHER", "NPROC_PER_NODE", "NNODES", "NODE_RANK",
         "MASTER_ADDR", "MASTER_PORT", "BATCH_SIZE", "ACCUM_STEPS", "AMP_OPT_LEVEL", "PYTHON", "DRY_RUN",
         "OMPI_COMM_WORLD_RANK", "MASTER_IP")


def _run(config, *args, timeout=30, **env):
    full = {k: v for k, v in os.environ.items() if k not in CLEAN}
    full.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **{k: str(v) for k, v in env.items()})
    return subprocess.run(["bash", os.path.join(SCRIPTS, f"run_{config}.sh"), *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)


def _dry(config, *args, **env):
    proc = _run(config, *args, DRY_RUN=1, **env)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    cmd = shlex.split(line)
    i = cmd.index(os.path.join(ROOT, "dwnet", "main.py"))
    launcher, main_args = cmd[:i], cmd[i + 1:]
    args, unknown = dmain.get_parser().parse_known_args(main_args)
    assert unknown == [], unknown
    opts = dict(zip(launcher[3::2], launcher[4::2]))
    return launcher[:3], opts, args


def test_the_six_scripts_exist():
    names = sorted(f[4:-3] for f in os.listdir(SCRIPTS) if f.startswith("run_") and f.endswith(".sh"))
    assert names == sorted(OFFICIAL)


@pytest.mark.parametrize("config", sorted(OFFICIAL))
def test_dry_run_gives_the_official_command(config):
    nodes, batch, accum, amp = OFFICIAL[config]
    launcher, opts, args = _dry(config)
    assert launcher == ["python", "-m", "torch.distributed.run"]
    assert opts == {"--nproc_per_node": "8", "--nnodes": str(nodes), "--node_rank": "0",
                    "--master_addr": "127.0.0.1", "--master_port": "12345"}
    assert args.cfg == os.path.join(ROOT, "dwnet", "configs", config + ".yaml") and os.path.isfile(args.cfg)
    assert (args.data_path, args.output, args.data_set) == ("/path/to/imagenet", f"output/{config}", "IMNET")
    assert (args.batch_size, args.accumulation_steps, args.amp_opt_level) == (batch, accum, amp)
    assert not args.eval and args.resume is None


def test_variables_and_extra_arguments():
    config = "i_dynamic_dwnet_base_patch4_window7_224"
    launcher, opts, args = _dry(config, "--zip", "--tag", "t1", "--opts", "TRAIN.EPOCHS", "3",
                                LAUNCHER="launch", DATA_PATH="/data/in 1k", OUTPUT="/runs/x", NPROC_PER_NODE=4,
                                OMPI_COMM_WORLD_RANK=1, MASTER_IP="10.0.0.2", MASTER_PORT=2222, BATCH_SIZE=32,
                                ACCUM_STEPS=0, AMP_OPT_LEVEL="O1", PYTHON="/opt/py")
    assert launcher == ["/opt/py", "-m", "torch.distributed.launch"]
    assert opts == {"--nproc_per_node": "4", "--nnodes": "2", "--node_rank": "1", "--master_addr": "10.0.0.2",
                    "--master_port": "2222"}
    assert (args.data_path, args.output, args.batch_size, args.accumulation_steps) == ("/data/in 1k", "/runs/x", 32,
                                                                                        None)
    assert args.zip and args.tag == "t1" and args.opts == ["TRAIN.EPOCHS", "3"] and args.amp_opt_level == "O1"
    assert args.cfg.endswith("i_dynamic_dwnet_base_patch4_window7_224.yaml")  # not the dynamic_dwnet_base one


def test_eval_mode_is_the_readme_command():
    launcher, opts, args = _dry("dwnet_tiny_patch4_window7_224", MODE="eval", RESUME="/ckpt/dwnet_tiny_224.pth",
                                LAUNCHER="launch")
    assert launcher[1:] == ["-m", "torch.distributed.launch"]
    assert opts == {"--nproc_per_node": "1", "--master_port": "12345"}
    assert args.eval and args.resume == "/ckpt/dwnet_tiny_224.pth" and args.batch_size == 128


def test_bad_settings_give_one_message():
    for env, want in (({"MODE": "eval"}, "RESUME=/path/to/dwnet_tiny_224.pth"),
                      ({"MODE": "test"}, "MODE must be train or eval"),
                      ({"LAUNCHER": "mpirun"}, "LAUNCHER must be torchrun or launch")):
        proc = _run("dwnet_tiny_patch4_window7_224", DRY_RUN=1, **env)
        assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.startswith("error: ") and want in proc.stderr


@pytest.mark.slow
def test_real_cpu_run_through_both_launchers(tmp_path):
    """One demo epoch of a tiny DWNet trained by the script with torchrun, then evaluated by the script's eval
    mode with torch.distributed.launch; the official accuracy line is printed."""
    tiny = ["--demo", "--device", "cpu", "--batch-size", "64", "--opts", "DATA.IMG_SIZE", "32", "DATA.NUM_WORKERS",
            "0", "MODEL.DWNET.EMBED_DIM", "16", "MODEL.DWNET.DEPTHS", "[1, 1, 1, 1]", "TRAIN.EPOCHS", "1",
            "TRAIN.WARMUP_EPOCHS", "0"]
    config = "dwnet_tiny_patch4_window7_224"
    common = dict(PYTHON=sys.executable, DATA_PATH=tmp_path / "data", OUTPUT=tmp_path / "out", NPROC_PER_NODE=1,
                  NNODES=1, MASTER_PORT=_port())
    proc = _run(config, *tiny, timeout=300, AMP_OPT_LEVEL="O0", **common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ckpt = tmp_path / "out" / config / "default" / "ckpt_epoch_0.pth"
    assert ckpt.is_file()
    common["MASTER_PORT"] = _port()
    proc = _run(config, *tiny, timeout=300, MODE="eval", RESUME=ckpt, LAUNCHER="launch", **common)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert re.search(r"Accuracy of the network on the 360 test images: [\d.]+%", proc.stdout)


def _port():
    from common.ports import free_port

    return free_port()
