"""Clean-up for the test cluster, also when the Python process that started it dies.

``LocalSlurmCluster.start()`` runs this file as a separate process (own session, so a Ctrl-C or a
kill of the test run's process group does not reach it) and keeps the write end of a pipe to its
stdin. It reads lines from that pipe:

    pid <n>     a daemon the cluster started (checked against its start time before any signal)
    done        the cluster stopped itself: exit without doing anything

End of file without ``done`` means the owner died (killed, crashed, interrupted before its
clean-up): the watchdog then cancels the cluster's jobs, ends the processes the jobs left
behind, the registered daemons, and removes the cluster folder when asked to.

Which processes belong to the cluster: the registered daemons (pid + start time) and every process
whose environment carries ``LAYERZOO_SLURM_CLUSTER=<cluster folder>`` (the daemons are started with
it and ``slurmstepd`` inherits it from ``slurmd``), together with their descendants (the job
scripts, ``srun``, the tasks). Nothing else is signalled.

Only the standard library: the same functions serve ``LocalSlurmCluster.stop()``.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

MARKER = "LAYERZOO_SLURM_CLUSTER"


def start_time(pid):
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _parent_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def descendants(pid, children=None):
    children = _parent_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def marked_processes(root):
    """Pids of the processes whose environment says they belong to the cluster in ``root``."""
    needle = f"{MARKER}={root}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(entry))
    return found


def _alive(pid, started):
    """Still the same process and not a zombie."""
    if started is None or start_time(pid) != started:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def terminate(pids, timeout=10.0):
    """SIGTERM ``{pid: start_time}``, wait up to ``timeout`` s, then SIGKILL what is left.
    A pid whose start time changed is a different process now and is left alone."""
    pids = {p: s for p, s in pids.items() if _alive(p, s)}
    for p in pids:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in pids.items()):
        time.sleep(0.1)
    for p, s in pids.items():
        if _alive(p, s):
            _signal(p, signal.SIGKILL)


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def sweep(root, keep=(), timeout=5.0):
    """End every process tree rooted at a process marked for ``root`` (except the pids in ``keep``),
    leaves first. Returns how many processes were signalled."""
    children = _parent_map()
    keep = set(keep) | {os.getpid()}
    victims = []
    for pid in marked_processes(root):
        if pid in keep:
            continue
        victims += [d for d in descendants(pid, children) if d not in keep] + [pid]
    order = {}
    for pid in reversed(victims):  # descendants before their ancestors
        if pid not in order:
            order[pid] = start_time(pid)
    terminate(order, timeout)
    return len(order)


def cancel_jobs(conf, timeout=20.0):
    """Cancel every job of the cluster configured by ``conf`` and wait for the queue to empty."""
    env = dict(os.environ, SLURM_CONF=conf)
    env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/usr/bin"
    deadline = time.monotonic() + timeout
    first = True
    while time.monotonic() < deadline:
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%A"], env=env, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return False
        if out.returncode:
            return False
        ids = sorted(set(out.stdout.split()))
        if not ids:
            return True
        if first:
            subprocess.run(["scancel", *ids], env=env, capture_output=True, timeout=10)
            first = False
        time.sleep(0.3)
    return False


def clean_up(root, conf, daemons, remove_root=False):
    """Jobs, then the processes they left, then the daemons (slurmd first), then the folder."""
    cancel_jobs(conf)
    children = _parent_map()
    keep = [p for p, _ in daemons]
    for p in list(keep):
        keep += descendants(p, children)  # slurmctld's slurmscriptd goes with slurmctld
    sweep(root, keep=keep)  # slurmstepd and the jobs' processes
    for pid, started in list(reversed(daemons)):  # registered munged, slurmctld, slurmd...: slurmd first
        terminate({pid: started}, timeout=10.0)
    sweep(root)
    if remove_root:
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        sys.stderr.write("usage: watchdog.py CLUSTER_FOLDER SLURM_CONF [--remove]\n")
        return 2
    root, conf = argv[0], argv[1]
    remove_root = argv[2:] == ["--remove"]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    daemons = []
    for line in sys.stdin:
        words = line.split()
        if words == ["done"]:
            return 0
        if len(words) == 2 and words[0] == "pid" and words[1].isdigit():
            pid = int(words[1])
            daemons.append((pid, start_time(pid)))
    clean_up(root, conf, daemons, remove_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
