"""slurm/launch.py: unit tests without SLURM, then real jobs on a private two-node SLURM cluster
(munged + slurmctld + one slurmd per node, started once per test process by the ``slurm_cluster``
fixture of conftest.py and stopped by it; needs root and Debian's ``slurm-wlm`` + ``munge``)."""
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm import launch as L
from slurm.testing.cluster import LocalSlurmCluster, missing_binaries

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "slurm"
DIANET = REPO / "dianet" / "cifar.py"
TOY = L.ScriptSpec("toy_train.py", ("-c", "--checkpoint"), "checkpoint", "{dir}/checkpoint.pth.tar")
# + --data-root <the tiny CIFAR set of conftest.tiny_sets> (512 digits in the demo's CIFAR layout)
DIANET_ARGS = ["-a", "dia_resnet", "--depth", "11", "--block-name", "bottleneck", "--train-batch", "64",
               "--manualSeed", "1", "--workers", "0", "--sync-bn",
               "--lr", "0.02"]  # at lr 0.1 the first epochs are chaotic: float rounding alone moves valid acc by %

needs_dianet = pytest.mark.skipif(not DIANET.is_file(), reason="dianet/cifar.py is not in this checkout")


@pytest.fixture
def toy(monkeypatch):
    """Point the launcher's script table at the stand-in training script."""
    monkeypatch.setattr(L, "REPO_ROOT", DATA)
    monkeypatch.setattr(L, "SCRIPTS", {TOY.path: TOY})
    return TOY


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        rc = L.main(argv, out=out)
    finally:
        sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------
# without SLURM
# ------------------------------------------------------------------------------------------------
def test_table_covers_every_training_entry_point():
    assert set(L.SCRIPTS) == {"dianet/cifar.py", "dla/cifar.py", "dla/train.py", "rlanet/train.py",
                              "rlanet/train_light.py", "dwnet/main.py", "dacdetr/main.py"}
    for path, spec in L.SCRIPTS.items():
        assert spec.path == path and spec.resume_option and spec.dir_option


@needs_dianet
def test_dry_run_prints_sbatch_script(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main([
        "--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem", "64G",
        "--partition", "gpu", "--time", "2-00:00:00", "--account", "vision", "--qos", "high",
        "--constraint", "volta32gb", "--job-name", "dia164", "--output", "logs", "--sbatch=--exclusive",
        "--sbatch=--mail-type=END", "--setup", "module load cuda",
        "--", "dianet/cifar.py", "-a", "dia_resnet", "--depth", "164", "--block-name", "bottleneck"])
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in ["--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--cpus-per-task=10", "--mem=64G",
                     "--partition=gpu", "--time=2880", "--account=vision", "--qos=high", "--constraint=volta32gb",
                     "--job-name=dia164", "--exclusive", "--mail-type=END", "--signal=USR2@120",
                     f"--output={tmp_path}/logs/%j/%j_0_log.out"]:
        assert f"#SBATCH {expected}" in lines, expected
    assert "module load cuda" in lines
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    assert not (tmp_path / "logs").exists()  # nothing submitted, nothing written


def test_dry_run_job_array_gives_each_point_its_own_folder(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["--dry-run", "--grid", "lr=0.1,0.05", "--grid", "epochs=1,2", "--",
                             "toy_train.py", "-c", "runs", "--lr", "0.3"])
    assert rc == 0, err
    assert "#SBATCH --array=0-3%4" in out.splitlines()
    tasks = [line for line in out.splitlines() if line.startswith("# task")]
    assert tasks == [
        "# task lr=0.1_epochs=1: toy_train.py --lr 0.1 --epochs 1 --checkpoint runs/lr=0.1_epochs=1",
        "# task lr=0.1_epochs=2: toy_train.py --lr 0.1 --epochs 2 --checkpoint runs/lr=0.1_epochs=2",
        "# task lr=0.05_epochs=1: toy_train.py --lr 0.05 --epochs 1 --checkpoint runs/lr=0.05_epochs=1",
        "# task lr=0.05_epochs=2: toy_train.py --lr 0.05 --epochs 2 --checkpoint runs/lr=0.05_epochs=2",
    ]


def test_unknown_script_lists_known_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["--dry-run", "--", "nosuch/train.py", "--epochs", "1"])
    assert rc == 2 and out == ""
    assert "unknown training script 'nosuch/train.py'" in err
    for known in ("dianet/cifar.py", "rlanet/train.py", "dwnet/main.py", "dacdetr/main.py"):
        assert known in err


def test_missing_separator_is_explained():
    rc, _, err = run_main(["--nodes", "2", "dianet/cifar.py"])
    assert rc == 2 and "after '--'" in err


def test_script_flag_error_caught_before_submitting(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["--", "toy_train.py", "--epochs", "two"])
    assert rc == 2 and out == ""
    assert "rejects its arguments" in err and "invalid int value: 'two'" in err
    rc, _, err = run_main(["--", "toy_train.py", "--no-such-flag"])
    assert rc == 2 and "unrecognized arguments: --no-such-flag" in err
    assert not (tmp_path / "slurm_logs").exists()


@needs_dianet
def test_dianet_flag_error_caught(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_main(["--dry-run", "--", "dianet/cifar.py", "--depth", "deep"])
    assert rc == 2 and "dianet/cifar.py rejects its arguments" in err and "--depth" in err


def test_no_slurm_and_no_local_names_what_is_missing(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch / srun
    rc, out, err = run_main(["--", "toy_train.py"])
    assert rc == 2 and out == ""
    assert "SLURM is not available here: `sbatch` and `srun` are not on PATH" in err
    assert "--local" in err and "--dry-run" in err


def test_parse_time():
    assert [L._parse_time(t) for t in ("90", "45:00", "45:30", "1:30:00", "2-00:00:00", "1-12")] == \
        [90, 45, 46, 90, 2880, 2160]


def test_option_helpers():
    args = ["-c", "a", "--lr=0.1", "--checkpoint", "b", "-cc"]
    assert L.option_value(args, ("-c", "--checkpoint")) == "c"
    assert L.option_value(args, ("--lr",)) == "0.1"
    assert L.option_value(args, ("--resume",), "x") == "x"
    assert L.set_option(args, ("-c", "--checkpoint"), "d") == ["--lr=0.1", "--checkpoint", "d"]


def test_checkpoint_location_of_each_lineage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    S = L.SCRIPTS
    assert L.checkpoint_path(S["dianet/cifar.py"], ["-c", "run"]) is None
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pth.tar").write_text("x")
    assert L.checkpoint_path(S["dianet/cifar.py"], ["-c", "run"]) == "run/checkpoint.pth.tar"
    # ImageNet lineage: <work-dir>/<arch>_<action>/checkpoint.pth.tar
    d = tmp_path / "work_dirs" / "rla_resnet50_"
    d.mkdir(parents=True)
    (d / "checkpoint.pth.tar").write_text("x")
    assert L.checkpoint_path(S["rlanet/train.py"], ["/data/imagenet"]) == "work_dirs/rla_resnet50_/checkpoint.pth.tar"
    assert L.checkpoint_path(S["rlanet/train.py"], ["-a", "rla_resnet101", "/data"]) is None
    # Swin lineage: newest ckpt_epoch_<e>.pth under <output>/<model name>/<tag>/
    d = tmp_path / "out" / "dwnet_tiny" / "default"
    d.mkdir(parents=True)
    for i, e in enumerate((8, 9, 10)):
        (d / f"ckpt_epoch_{e}.pth").write_text("x")
        os.utime(d / f"ckpt_epoch_{e}.pth", (1000 + i, 1000 + i))
    assert L.checkpoint_path(S["dwnet/main.py"], ["--output", "out"]) == "out/dwnet_tiny/default/ckpt_epoch_10.pth"
    # DETR lineage
    (tmp_path / "det").mkdir()
    (tmp_path / "det" / "checkpoint.pth").write_text("x")
    assert L.checkpoint_path(S["dacdetr/main.py"], ["--output_dir", "det"]) == "det/checkpoint.pth"


def test_checkpoint_method_adds_resume(toy, tmp_path):
    job = L.TrainingJob(TOY, DATA / "toy_train.py", ["-c", "ck", "--epochs", "3"], cwd=tmp_path)
    first = job.checkpoint()
    assert "--resume" not in first.function.args  # nothing saved yet
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "checkpoint.pth.tar").write_text("{}")
    again = job.checkpoint()
    assert again.function.args == ["-c", "ck", "--epochs", "3", "--resume", str(tmp_path / "ck" / "checkpoint.pth.tar")]
    assert again.function.restarts == 1 and job.restarts == 0


def test_local_executor_two_ranks(toy, tmp_path, monkeypatch):
    """--local: the same job through submitit's local executor, 2 processes joined by gloo."""
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    jobs = L.launch(["--local", "--tasks-per-node", "2", "--wait", "--", "toy_train.py", "--epochs", "2",
                     "-c", "ck"], out=out)
    assert "Submitted local job" in out.getvalue()
    results = jobs[0].results()
    assert sorted(r["rank"] for r in results) == [0, 1] and {r["world_size"] for r in results} == {2}
    rows = (tmp_path / "ck" / "log.txt").read_text().splitlines()
    assert rows == ["Epoch\tLR\tSum\tWorld", "0\t0.1\t3.0\t2", "1\t0.1\t3.0\t2"]  # 1 + 2 summed over ranks


def test_local_script_failure_is_reported(toy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(L.LaunchError, match="failed job"):
        L.launch(["--local", "--wait", "--", "toy_train.py", "--fail"], out=io.StringIO())


# ------------------------------------------------------------------------------------------------
# on a real two-node SLURM cluster (n1, n2: two slurmd on this machine)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def cluster(slurm_cluster):
    return slurm_cluster


def test_node_address_of_a_name_that_does_not_resolve(monkeypatch, tmp_path):
    """The job's first node becomes MASTER_ADDR: a node name without a hosts entry goes through the
    node's NodeAddr (a stand-in ``scontrol`` here); a name that resolves is kept."""
    assert L.node_address("localhost") == "localhost"
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho \"NodeName=$4 Arch=x86_64 CoresPerSocket=2 NodeAddr=10.1.2.3 NodeHostName=h\"\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert L.node_address("lz-no-such-node.invalid") == "10.1.2.3"
    fake.write_text("#!/bin/sh\necho 'Node lz-x not found' >&2; exit 1\n")
    assert L.node_address("lz-no-such-node.invalid") == "lz-no-such-node.invalid"


@pytest.mark.slurm
def test_cluster_has_two_nodes_and_leaves_hosts_alone(cluster):
    hosts = Path("/etc/hosts").read_bytes()
    assert cluster.node_names == ["n1", "n2"]
    assert set(cluster.node_states()) == {"n1", "n2"}
    conf = cluster.conf_path.read_text()
    nodes = [line for line in conf.splitlines() if line.startswith("NodeName=")]
    assert [line.split()[0] for line in nodes] == ["NodeName=n1", "NodeName=n2"] and "slurmd.%n" in conf
    assert all("NodeHostname=localhost NodeAddr=127.0.0.1 Port=" in line for line in nodes)
    assert len({line.split("Port=")[1].split()[0] for line in nodes}) == 2  # a port of its own per slurmd
    out = cluster.run("srun", "--nodes", "2", "--ntasks-per-node", "1", "sh", "-c", "echo $SLURMD_NODENAME $SLURM_PROCID")
    assert sorted(out.split("\n")[:2]) == ["n1 0", "n2 1"]
    assert L.node_address("n1") in ("n1", "127.0.0.1")  # resolves, or through NodeAddr
    assert Path("/etc/hosts").read_bytes() == hosts


def wait_results(job, ntasks, timeout=600, on_poll=None):
    """Wait for every task's result file (there is no sacct here, so job.state stays UNKNOWN)."""
    folder = job.paths.folder
    deadline = time.monotonic() + timeout
    while True:
        if all((folder / f"{job.job_id}_{t}_result.pkl").exists() for t in range(ntasks)):
            return job.results()
        if on_poll is not None:
            on_poll()
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job.job_id} did not finish in {timeout} s:\n{job.stdout()}\n{job.stderr()}")
        time.sleep(0.5)


def log_rows(path):
    lines = Path(path).read_text().splitlines()
    return lines[0], [[float(x) for x in line.split()] for line in lines[1:] if line.strip()]


# session scope (as the cluster): under ``pytest -n 2`` the worker may run tests of other modules between
# these, which would tear a module-scoped fixture down and submit the job again
@pytest.fixture(scope="session")
def dianet_requeued_job(cluster, tiny_sets, tmp_path_factory):
    """2-node x 1-task gloo DDP DIANet demo training submitted through slurm/launch.py (rank 1 on n2
    reaches rank 0 on n1), requeued with ``scontrol requeue`` once the first epoch's checkpoint
    exists; plus the same training in one plain process (same global batch) run at the same time
    for comparison."""
    if not DIANET.is_file():
        pytest.skip("dianet/cifar.py is not in this checkout")
    work = tmp_path_factory.mktemp("dianet_slurm")
    epochs = ["--epochs", "2", "--data-root", tiny_sets["cifar"]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    ref = subprocess.Popen([sys.executable, str(DIANET), *DIANET_ARGS, *epochs, "--checkpoint", "single"],
                           cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    old = os.getcwd()
    os.chdir(work)
    try:
        out = io.StringIO()
        job, = L.launch(["--nodes", "2", "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "60",
                         "--job-name", "lz-test-ddp",
                         "--", "dianet/cifar.py", *DIANET_ARGS, *epochs, "--checkpoint", "ddp"], out=out)
    finally:
        os.chdir(old)
    ckpt = work / "ddp" / "checkpoint.pth.tar"
    state = {"requeued_at": None}

    def requeue_after_first_epoch():
        if state["requeued_at"] is None and ckpt.exists():
            cluster.run("scontrol", "requeue", job.job_id)
            state["requeued_at"] = _epochs_in(work / "ddp" / "log.txt")

    results = wait_results(job, 2, timeout=900, on_poll=requeue_after_first_epoch)
    ref_out, _ = ref.communicate(timeout=900)
    assert ref.returncode == 0, ref_out[-3000:]
    return {"job": job, "results": results, "work": work, "launch_out": out.getvalue(), **state}


def _epochs_in(log):
    try:
        return len(Path(log).read_text().splitlines()) - 1
    except OSError:
        return None


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_dianet_two_task_ddp_matches_single_process(dianet_requeued_job):
    r = dianet_requeued_job
    work, job = r["work"], r["job"]
    assert f"Submitted job {job.job_id}" in r["launch_out"] and "(2 tasks)" in r["launch_out"]
    assert sorted(x["rank"] for x in r["results"]) == [0, 1]
    assert all(x["world_size"] == 2 and x["returncode"] == 0 for x in r["results"])
    assert [x["node"] for x in sorted(r["results"], key=lambda x: x["rank"])] == ["n1", "n2"]  # one rank per node
    assert len({x["master"] for x in r["results"]}) == 1  # both ranks met at rank 0's address and port
    assert r["results"][0]["master"].split(":")[0] == L.node_address("n1")
    assert (work / "ddp" / "checkpoint.pth.tar").is_file() and (work / "ddp" / "log.jsonl").is_file()
    assert "Best acc:" in job.task(0).stdout()
    head, ddp = log_rows(work / "ddp" / "log.txt")
    head1, single = log_rows(work / "single" / "log.txt")
    assert head == head1 and head.split("\t")[:5] == ["Learning Rate", "Train Loss", "Valid Loss", "Train Acc.",
                                                      "Valid Acc."]
    assert len(ddp) == len(single) == 2
    # same global batch, synchronised BN: equal up to float rounding (measured single-process sensitivity to
    # the thread count at this lr: losses 1e-4 relative, accuracy 1 image)
    for a, b in zip(ddp, single):
        assert a[0] == b[0]                          # LR
        assert abs(a[1] - b[1]) < 5e-3 * abs(b[1])   # train loss
        assert abs(a[2] - b[2]) < 5e-3 * abs(b[2])   # valid loss
        assert abs(a[3] - b[3]) < 1.5                # train acc (%)
        assert abs(a[4] - b[4]) < 1.5                # valid acc (%)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_requeue_resumes_from_checkpoint(dianet_requeued_job):
    r = dianet_requeued_job
    work, job = r["work"], r["job"]
    assert r["requeued_at"] is not None and r["requeued_at"] < 2, "requeue must hit before the last epoch"
    for rank in (0, 1):  # both nodes started twice, the second time from the checkpoint
        log = job.task(rank).stdout()
        assert log.count(f"[launch] rank {rank}/2 (node {rank},") == 2
        assert f"resuming from {work / 'ddp' / 'checkpoint.pth.tar'}" in log
    assert all("--resume" in " ".join(x["args"]) for x in r["results"])
    text = (work / "ddp" / "log.txt").read_text().splitlines()
    assert len(text) == 1 + 2 and len(set(text)) == len(text)  # header + one row per epoch, none repeated
    import torch

    state = torch.load(work / "ddp" / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_job_array_of_two_configurations(cluster, tiny_sets, tmp_path, monkeypatch):
    if not DIANET.is_file():
        pytest.skip("dianet/cifar.py is not in this checkout")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    jobs = L.launch(["--grid", "lr=0.1,0.05", "--time", "60", "--job-name", "lz-test-array", "--",
                     "dianet/cifar.py", *DIANET_ARGS, "--epochs", "1", "--data-root", tiny_sets["cifar"],
                     "--checkpoint", "sweep"], out=out)
    assert len(jobs) == 2
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.job_id for j in jobs] == [f"{array_id}_0", f"{array_id}_1"]
    for job, lr in zip(jobs, ("0.1", "0.05")):
        (res,) = wait_results(job, 1, timeout=600)
        assert res["args"][-2:] == ["--checkpoint", f"sweep/lr={lr}"]
        _, rows = log_rows(tmp_path / "sweep" / f"lr={lr}" / "log.txt")
        assert len(rows) == 1 and rows[0][0] == float(lr)  # the grid value replaced the base --lr


def test_readme_shows_the_real_two_node_sbatch_script(tmp_path, monkeypatch):
    """The generated sbatch script in slurm/README.md and in the root README is what --dry-run prints for
    their two-node command."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_main(["--dry-run", "--nodes", "2", "--gpus-per-node", "8", "--cpus-per-task", "10", "--mem", "0",
                             "--time", "3-00:00:00", "--partition", "gpu", "--", "rlanet/train.py", "-a",
                             "rla_resnet50", "-b", "256", "/data/imagenet"])
    assert rc == 0, err
    # the interpreter first: in a checkout's own .venv its path starts with the checkout's
    out = out.replace(sys.executable, "/home/me/venv/bin/python")
    out = out.replace(str(tmp_path), "/home/me/layerzoo").replace(str(L.REPO_ROOT), "/home/me/layerzoo")
    for readme, indent in ((REPO / "slurm" / "README.md", ""), (REPO / "README.md", "  ")):
        blocks = [b.split(f"{indent}```", 1)[0] for b in readme.read_text().split(f"{indent}```bash\n")[1:]]
        two_node = [b for b in blocks if "#SBATCH --nodes=2" in b]
        assert len(two_node) == 1, readme
        shown = "".join(line[len(indent):] + "\n" for line in two_node[0].splitlines())
        assert shown == out, readme
