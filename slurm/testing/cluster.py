"""A private SLURM cluster on this machine (munged + slurmctld + one slurmd per node) for tests and
local trials.

Everything lives in one fresh folder: the filled-in ``slurm.conf``, a munge key and socket, spool
and state folders, logs. The daemons run in the foreground as children of this Python process, so
``stop()`` ends exactly the processes ``start()`` created and reaps them. Client commands
(``sbatch``, ``squeue``, ``scontrol``, and so submitit) find the cluster through the ``SLURM_CONF``
environment variable, which ``env()`` returns and ``activate()`` sets.

    with LocalSlurmCluster(nodes=2) as cluster:   # needs root and Debian's slurm-wlm + munge
        cluster.activate()
        ...

Several nodes: each is one ``slurmd -D -N <name>`` with its own port, spool folder, pid and log
file (``%n`` in the configuration), all on 127.0.0.1 (``NodeHostname=localhost``,
``NodeAddr=127.0.0.1``). One node is called ``localhost``; N > 1 nodes are ``n1`` ... ``nN``, names
that need not resolve: ``slurm/launch.py`` turns a job's first node name into an address through
the node's ``NodeAddr`` when the name itself does not resolve, so ``/etc/hosts`` stays as it is.

Nothing is left running when the owner goes away: ``stop()`` (also called by ``with``, at
interpreter exit and on SIGTERM / SIGHUP) cancels the jobs, ends what they left behind and the
daemons; a watchdog process (``slurm/testing/watchdog.py``, its own session) does the same when
this process is killed or dies before it could, and removes the folder it made.

From a shell (keeps the cluster up until Ctrl-C, then stops it)::

    python -m slurm.testing.cluster [--nodes 2]
"""
from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common.ports import free_port
from slurm.testing import watchdog

__all__ = ["ClusterUnavailable", "LocalSlurmCluster", "missing_binaries"]

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "slurm.conf"
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ClusterUnavailable(RuntimeError):
    """The SLURM / munge programs are missing or the daemons did not come up."""


def _which(name):
    path = shutil.which(name)
    if path is None:
        for d in _SBIN:
            cand = os.path.join(d, name)
            if os.access(cand, os.X_OK):
                return cand
    return path


def missing_binaries():
    """Names of the programs this cluster needs that are not installed."""
    return [b for b in BINARIES if _which(b) is None]


_free_port = free_port


def _mem_mb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 4096


class LocalSlurmCluster:
    """``nodes`` nodes (an int, or a list of node names) in partition ``debug``.

    cpus / mem_mb: what each node advertises (defaults: this machine's, at least 2 CPUs, so that
    2-task jobs fit; slurmd is told to trust the configuration rather than the hardware).
    """

    def __init__(self, root=None, cpus=None, mem_mb=None, start_timeout=60.0, nodes=1):
        self.root = Path(root) if root else None
        self._own_root = root is None
        if isinstance(nodes, int):
            if nodes < 1:
                raise ValueError("nodes must be >= 1")
            nodes = ["localhost"] if nodes == 1 else [f"n{i + 1}" for i in range(nodes)]
        self.node_names = list(nodes)
        self.cpus = cpus or max(2, os.cpu_count() or 1)
        self.mem_mb = mem_mb or max(1024, int(_mem_mb() * 0.8) // len(self.node_names))
        self.start_timeout = start_timeout
        self.procs = {}
        self._logs = []
        self._watchdog = None
        self._old_handlers = {}

    # ------------------------------------------------------------------ paths and config
    @property
    def conf_path(self):
        return self.root / "slurm.conf"

    @property
    def munge_socket(self):
        return self.root / "munge.socket"

    def env(self, base=None):
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf_path)
        path = env.get("PATH", "")
        for d in _SBIN:
            if d not in path.split(os.pathsep):
                path = path + os.pathsep + d if path else d
        env["PATH"] = path
        return env

    def _daemon_env(self):
        env = self.env()
        env[watchdog.MARKER] = str(self.root)  # inherited by slurmstepd: how the clean-up finds the jobs
        return env

    def activate(self):
        """Point this process (and everything it starts) at the cluster."""
        os.environ.update(self.env())

    def _write_config(self):
        text = TEMPLATE.read_text()
        nodes = []
        for name in self.node_names:
            nodes.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
                         f"CPUs={self.cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 "
                         f"RealMemory={self.mem_mb} State=UNKNOWN")
        fields = {
            "USER": getpass.getuser(),
            "CTLD_PORT": str(_free_port()),
            "STATE": str(self.root),
            "NODES": "\n".join(nodes),
            "NODE_LIST": ",".join(self.node_names),
        }
        for key, value in fields.items():
            text = text.replace(f"@{key}@", value)
        self.conf_path.write_text(text)

    # ------------------------------------------------------------------ start / stop
    def start(self):
        missing = missing_binaries()
        if missing:
            raise ClusterUnavailable(
                "SLURM test cluster needs " + ", ".join(missing) + " (Debian: apt-get install -y slurm-wlm munge)"
            )
        if os.geteuid() != 0:
            raise ClusterUnavailable("the SLURM test cluster must run as root (slurmd launches jobs)")
        if self.root is None:
            # short path: the munge socket name must fit in a unix socket address (108 bytes)
            self.root = Path(tempfile.mkdtemp(prefix="lz-slurm-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        (self.root / "ctld").mkdir(exist_ok=True)
        self._write_config()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        env = self._daemon_env()
        try:
            self._start_watchdog()
            self._spawn("munged", [
                _which("munged"), "--foreground", "--force",
                f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}", f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ], env)
            self._wait(self._munge_ok, "munged")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf_path)], env)
            for name in self.node_names:
                self._spawn(f"slurmd.{name}", [_which("slurmd"), "-D", "-N", name, "-f", str(self.conf_path)], env)
            self._wait(self._nodes_ready, "slurmctld/slurmd")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_watchdog(self):
        cmd = [sys.executable, str(HERE / "watchdog.py"), str(self.root), str(self.conf_path)]
        if self._own_root:
            cmd.append("--remove")
        self._watchdog = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        atexit.register(self.stop)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.stop()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _spawn(self, name, cmd, env):
        log = open(self.root / f"{name}.out", "wb")
        self._logs.append(log)
        self.procs[name] = proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
        if self._watchdog is not None and self._watchdog.poll() is None:
            try:
                self._watchdog.stdin.write(f"pid {proc.pid}\n")
                self._watchdog.stdin.flush()
            except OSError:
                pass

    def _check_alive(self):
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with code {proc.returncode}\n" + self.logs_tail())

    def _wait(self, probe, what):
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if probe():
                return
            time.sleep(0.2)
        raise ClusterUnavailable(f"{what} did not come up within {self.start_timeout:.0f} s\n" + self.logs_tail())

    def _munge_ok(self):
        sock = f"--socket={self.munge_socket}"
        try:
            cred = subprocess.run([_which("munge"), sock, "-n"], capture_output=True, timeout=5)
            if cred.returncode:
                return False
            out = subprocess.run([_which("unmunge"), sock], input=cred.stdout, capture_output=True, timeout=5)
            return out.returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def node_states(self):
        """``{node name: state}`` as ``sinfo`` reports it (empty when slurmctld does not answer)."""
        try:
            out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%N %t"], env=self.env(), capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return {}
        if out.returncode:
            return {}
        return dict(line.split(None, 1) for line in out.stdout.splitlines() if len(line.split()) == 2)

    def _nodes_ready(self):
        states = self.node_states()
        return all(states.get(n, "").rstrip("*") in ("idle", "mix", "alloc") for n in self.node_names)

    def run(self, *cmd, check=True, timeout=60):
        """Run a SLURM client command against this cluster; returns its stdout."""
        out = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise subprocess.CalledProcessError(out.returncode, cmd, out.stdout, out.stderr)
        return out.stdout

    def cancel_all(self, timeout=20.0):
        """Cancel every job and wait (up to ``timeout`` s) until the queue is empty."""
        if self.root is None or "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        watchdog.cancel_jobs(str(self.conf_path), timeout)

    def stop(self):
        """Cancel the jobs, end the processes they left behind, then the daemons this object started
        (every slurmd first, munged last)."""
        atexit.unregister(self.stop)
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                if signal.getsignal(sig) == self._on_signal:
                    signal.signal(sig, old)
        self._old_handlers.clear()
        self.cancel_all()
        if self.root is not None:
            daemons = {p.pid for p in self.procs.values()}
            watchdog.sweep(str(self.root), keep=daemons | {os.getpid()} | self._daemon_children(daemons))
        order = [n for n in self.procs if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in order:
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.procs and self.root is not None:
            watchdog.sweep(str(self.root), keep={os.getpid()})
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if self._watchdog is not None:
            with contextlib.suppress(OSError, ValueError):
                self._watchdog.stdin.write("done\n")
                self._watchdog.stdin.close()
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    @staticmethod
    def _daemon_children(daemons):
        children = watchdog._parent_map()
        out = set()
        for pid in daemons:
            out.update(watchdog.descendants(pid, children))
        return out

    def logs_tail(self, lines=20):
        if self.root is None:
            return ""
        chunks = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            try:
                tail = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            chunks.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(chunks)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        if self._own_root and self.root is not None:  # the temporary folder start() made
            shutil.rmtree(self.root, ignore_errors=True)


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m slurm.testing.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1: 'localhost'; N > 1: n1..nN)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs each node advertises")
    opts = p.parse_args(argv)
    cluster = LocalSlurmCluster(nodes=opts.nodes, cpus=opts.cpus).start()
    print(f"SLURM cluster up in {cluster.root} (nodes {', '.join(cluster.node_names)})\n"
          f"  export SLURM_CONF={cluster.conf_path}\nCtrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        print("SLURM cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
