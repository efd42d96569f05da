"""slurm/testing: the test cluster leaves nothing behind when its owner is killed (``kill -9`` of a
test run with a job running on both nodes): the watchdog ends the job's processes, every daemon and
removes the cluster folder."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm.testing import watchdog
from slurm.testing.cluster import missing_binaries

REPO = Path(__file__).resolve().parent.parent

OWNER = r"""
import json, sys, time
from slurm.testing.cluster import LocalSlurmCluster
c = LocalSlurmCluster(nodes=2, cpus=1).start()
c.run("sbatch", "--nodes", "2", "--ntasks-per-node", "1", "--output", str(c.root / "job.out"),
      "--wrap", "srun sleep 600")
deadline = time.monotonic() + 120
while "R" not in c.run("squeue", "-h", "-o", "%t").split() and time.monotonic() < deadline:
    time.sleep(0.2)
print(json.dumps({"root": str(c.root), "daemons": {n: p.pid for n, p in c.procs.items()}}), flush=True)
time.sleep(3600)
"""


def _job_sleeps(conf):
    """Pids of the job's ``sleep 600`` tasks (their environment names this cluster's configuration)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[:2] == [b"sleep", b"600"] or cmd[:2] == [b"/usr/bin/sleep", b"600"]:
            if f"SLURM_CONF={conf}".encode() in env:
                found.append(int(entry))
    return found


def _running(pid):
    started = watchdog.start_time(pid)
    return watchdog._alive(pid, started)


@pytest.mark.slurm
def test_killed_owner_leaves_nothing_running():
    if missing_binaries():
        pytest.skip("SLURM test cluster needs " + ", ".join(missing_binaries()))
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster must be started as root")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("SLURM_CONF", None)
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, "the cluster did not come up"
        info = json.loads(line)
        root, daemons = Path(info["root"]), info["daemons"]
        assert sorted(daemons) == ["munged", "slurmctld", "slurmd.n1", "slurmd.n2"]
        conf = str(root / "slurm.conf")
        deadline = time.monotonic() + 60
        while len(_job_sleeps(conf)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        sleeps = _job_sleeps(conf)
        assert len(sleeps) == 2, "the job's task did not start on both nodes"
        stepds = [p for p in watchdog.marked_processes(str(root)) if p not in daemons.values()]
        assert stepds  # slurmstepd of the job: not children of the owner, found through the marker
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    deadline = time.monotonic() + 60
    left = None
    while time.monotonic() < deadline:
        left = [p for p in [*daemons.values(), *sleeps, *stepds] if _running(p)]
        if not left and not root.exists():
            break
        time.sleep(0.3)
    assert not left, f"still running after the owner was killed: {left}"
    assert not root.exists()


def test_sweep_ends_marked_trees_only(tmp_path):
    """watchdog.sweep (no SLURM needed): a process carrying the cluster's marker and its child are
    ended; a process of another cluster folder and an unmarked one are left alone."""
    def spawn(marker):
        env = dict(os.environ)
        if marker:
            env[watchdog.MARKER] = marker
        # a shell whose child sleeps: the child inherits the marker, as a job's tasks do from slurmstepd
        return subprocess.Popen(["sh", "-c", "sleep 60 & wait"], env=env, start_new_session=True)

    ours, other, plain = spawn(str(tmp_path)), spawn(str(tmp_path / "other")), spawn(None)
    try:
        deadline = time.monotonic() + 10
        while not watchdog.descendants(ours.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = watchdog.descendants(ours.pid)
        assert len(child) == 1
        assert set(watchdog.marked_processes(str(tmp_path))) == {ours.pid, *child}
        assert watchdog.sweep(str(tmp_path), timeout=5) == 2
        assert ours.wait(timeout=10) is not None and not _running(child[0])
        assert other.poll() is None and plain.poll() is None
    finally:
        for p in (ours, other, plain):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
