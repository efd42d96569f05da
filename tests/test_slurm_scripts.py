"""Every training script of the project through slurm/launch.py: the launcher's table entry checked
against what the script really writes (checkpoint path, argument check), a short run of each on the
private two-node test cluster, and an ``scontrol requeue`` of a two-node ImageNet-style job
(rlanet/train.py) that must resume on both nodes from its checkpoint with no epoch lost or logged
twice. The runs are tiny (the ``tiny_sets`` of conftest.py: a few hundred CIFAR images, 80 ImageNet-
layout images, 4 COCO images; 32 px; one epoch) and submitted together, so the cluster runs them side
by side."""
import io
import os
from pathlib import Path

import pytest

from slurm import launch as L

REPO = Path(__file__).resolve().parent.parent
DWNET_CFG = str(REPO / "dwnet" / "configs" / "dwnet_tiny_patch4_window7_224.yaml")
DWNET_TINY = ["DATA.IMG_SIZE", "32", "DATA.NUM_WORKERS", "0", "MODEL.DWNET.EMBED_DIM", "16",
              "MODEL.DWNET.DEPTHS", "[1, 1, 1, 1]", "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "5"]

# script -> (arguments of a tiny one-epoch run, in the job's working folder; the checkpoint file it must leave,
#            as the launcher's table names it)
RUNS = {
    "dla/cifar.py": (["-a", "dla_l", "--depth", "11", "--block-name", "bottleneck", "--train-batch", "128",
                      "--test-batch", "100", "--workers", "0", "--manualSeed", "3", "--print-freq", "0",
                      "--data-root", "{cifar}", "--epochs", "1", "-c", "dla_cifar"],
                     "dla_cifar/checkpoint.pth.tar"),
    "dla/train.py": (["{imagefolder}", "-a", "resnet50_dla_l", "--img-size", "32", "-b", "16", "-j", "0",
                      "--steps-per-epoch", "2", "-p", "0", "--seed", "5", "--epochs", "1", "--work-dir", "dla_in"],
                     "dla_in/resnet50_dla_l_/checkpoint.pth.tar"),
    "rlanet/train_light.py": (["{imagefolder}", "-a", "dsrla_mobilenetv2_k6", "--image-size", "32", "-j", "0",
                               "-b", "20", "-p", "0", "--seed", "3", "--epochs", "1", "--work-dir", "rla_light"],
                              "rla_light/dsrla_mobilenetv2_k6_/checkpoint.pth.tar"),
    "dwnet/main.py": (["--cfg", DWNET_CFG, "--data-path", "{imagefolder}", "--output", "dw", "--amp-opt-level", "O0",
                       "--batch-size", "20", "--device", "cpu", "--opts", *DWNET_TINY, "TRAIN.EPOCHS", "1"],
                      "dw/dwnet_tiny_patch4_window7_224/default/ckpt_epoch_0.pth"),
    "dacdetr/main.py": (["--coco_path", "{coco}", "--output_dir", "detr", "--device", "cpu", "--with_box_refine",
                         "--two_stage", "--input_scale", "0.16",
                         "--num_queries_one2one", "20", "--enc_layers", "1", "--dec_layers", "1", "--hidden_dim", "32",
                         "--dim_feedforward", "64", "--lr_backbone", "0", "--batch_size", "2", "--epochs", "1",
                         "--num_workers", "0"],
                        "detr/checkpoint.pth"),
}
# the ImageNet-style job that is requeued: 2 nodes x 1 task, 2 epochs; with the official
# --multiprocessing-distributed, which must not spawn more processes where the launcher made them
RLANET = (["{imagefolder}", "-a", "dsrla_mobilenetv2_k6", "--image-size", "32", "-j", "0", "-b", "8", "-p", "0",
           "--seed", "3", "--epochs", "2", "--work-dir", "rla_in", "--multiprocessing-distributed"],
          "rla_in/dsrla_mobilenetv2_k6_/checkpoint.pth.tar")
BAD_VALUE = {"dwnet/main.py": ["--batch-size", "many"]}  # dwnet parses known args only: unknown flags pass


def _fill(args, data):
    return [a.format(**data) if a.startswith("{") else a for a in args]


# ------------------------------------------------------------------------------------------------
# the table entries against the scripts (no cluster)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(L.SCRIPTS))
def test_table_entry_checks_the_real_parser(script, tmp_path, monkeypatch, capsys):
    """A run's arguments pass the script's own parser (no 'not checking' warning: the named parser
    function exists and returns an argparse parser); a bad value is refused before submission."""
    spec, path = L.resolve_script(script)
    assert path.is_file(), f"{script} is in the launcher's table but not in the repository"
    monkeypatch.chdir(tmp_path)
    good = {**RUNS, "rlanet/train.py": RLANET}.get(script, (["--epochs", "1"], None))[0]
    good = _fill(good, {"cifar": "c", "imagefolder": "i", "coco": "d"})
    assert L.validate_script_args(spec, path, good) is True
    assert "not checking" not in capsys.readouterr().err
    with pytest.raises(L.LaunchError, match="rejects its arguments"):
        L.validate_script_args(spec, path, good + BAD_VALUE.get(script, ["--epochs", "two"]))


# ------------------------------------------------------------------------------------------------
# on the two-node test cluster
# ------------------------------------------------------------------------------------------------
# session scope: see dianet_requeued_job in test_slurm_launch.py
@pytest.fixture(scope="session")
def script_jobs(slurm_cluster, tiny_sets, tmp_path_factory):
    """Submit every run of RUNS (1 node x 1 task each) and the two-node rlanet/train.py job together;
    requeue the rlanet job once its first epoch's checkpoint is there; wait for all of them."""
    from test_slurm_launch import wait_results

    work = tmp_path_factory.mktemp("slurm_scripts")
    data = tiny_sets
    old = os.getcwd()
    os.chdir(work)
    jobs, outs = {}, {}
    try:
        for script, (args, _) in [("rlanet/train.py", RLANET), *RUNS.items()]:
            out = io.StringIO()
            nodes = ["--nodes", "2"] if script == "rlanet/train.py" else []
            (jobs[script],) = L.launch([*nodes, "--tasks-per-node", "1", "--cpus-per-task", "1", "--time", "60",
                                        "--", script, *_fill(args, data)], out=out)
            outs[script] = out.getvalue()
    finally:
        os.chdir(old)
    rla_ckpt = work / RLANET[1]
    state = {"requeued_after": None}

    def requeue_rlanet():
        if state["requeued_after"] is None and rla_ckpt.exists():
            slurm_cluster.run("scontrol", "requeue", jobs["rlanet/train.py"].job_id)
            state["requeued_after"] = _rows(rla_ckpt.parent / "val_acc1.txt")

    results = {}  # generous limit: seven jobs share the CPUs, and CI machines may be busy
    for script, ntasks in [("rlanet/train.py", 2), *((s, 1) for s in RUNS)]:
        try:  # one failed script fails its own test only
            results[script] = wait_results(jobs[script], ntasks, timeout=1800,
                                           on_poll=requeue_rlanet if ntasks == 2 else None)
        except Exception as exc:
            results[script] = exc
    return {"work": work, "jobs": jobs, "outs": outs, "results": results, **state}


def _result(script_jobs, script):
    res = script_jobs["results"][script]
    if isinstance(res, Exception):
        job = script_jobs["jobs"][script]
        pytest.fail(f"{script} failed through the launcher: {res}\n{job.stderr()[-3000:]}")
    return res


def _rows(path):
    try:
        return [line.split() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError:
        return None


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_script_runs_through_the_launcher(script_jobs, script):
    work, job = script_jobs["work"], script_jobs["jobs"][script]
    res = _result(script_jobs, script)[0]
    assert f"Submitted job {job.job_id}: {script}" in script_jobs["outs"][script]
    assert res["returncode"] == 0 and res["world_size"] == 1 and res["node"] in ("n1", "n2")
    expected = work / RUNS[script][1]
    assert expected.is_file(), f"{script} did not write {RUNS[script][1]}:\n{job.stdout()[-3000:]}"
    # the launcher finds the file a requeued run would resume from: the table entry is true
    assert res["checkpoint"] == str(expected)
    if script != "dwnet/main.py":  # the Swin lineage checkpoint pickles the yacs config (read with trust)
        from common.checkpoint import load_checkpoint

        state = load_checkpoint(str(expected), map_location="cpu")
        assert state["epoch"] in (1, 0)


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_imagenet_job_resumes_after_requeue(script_jobs):
    """rlanet/train.py, 2 nodes x 1 task, requeued after its first epoch: both ranks start again from
    the checkpoint; the curve logs hold one row per epoch, none repeated; the checkpoint says 2 epochs."""
    work, job = script_jobs["work"], script_jobs["jobs"]["rlanet/train.py"]
    results = sorted(_result(script_jobs, "rlanet/train.py"), key=lambda r: r["rank"])
    assert [r["node"] for r in results] == ["n1", "n2"] and all(r["world_size"] == 2 for r in results)
    assert script_jobs["requeued_after"] is not None and len(script_jobs["requeued_after"]) < 2, \
        "the requeue must come before the last epoch"
    ckpt = work / RLANET[1]
    for rank in (0, 1):
        log = job.task(rank).stdout()
        assert log.count(f"[launch] rank {rank}/2 (node {rank},") == 2
        assert f"resuming from {ckpt}" in log
        assert results[rank]["resumed_from"] == str(ckpt)
    for curve in ("loss_plot.txt", "val_acc1.txt", "train_acc1.txt"):
        rows = _rows(ckpt.parent / curve)
        assert len(rows) == 2 and len({tuple(r) for r in rows}) == 2, (curve, rows)
    from common.checkpoint import load_checkpoint

    assert load_checkpoint(str(ckpt), map_location="cpu")["epoch"] == 2
