"""A private one-node SLURM cluster (munged + slurmctld + slurmd) for tests and local trials.

Everything lives in one fresh folder: the filled-in ``slurm.conf``, a munge key and socket, spool
and state folders, logs. The daemons run in the foreground as children of this Python process, so
``stop()`` ends exactly the processes ``start()`` created and reaps them. Client commands
(``sbatch``, ``squeue``, ``scontrol``, and so submitit) find the cluster through the ``SLURM_CONF``
environment variable, which ``env()`` returns and ``activate()`` sets.

    with LocalSlurmCluster() as cluster:      # needs root and Debian's slurm-wlm + munge
        cluster.activate()
        ...

From a shell (keeps the cluster up until Ctrl-C, then stops it)::

    python -m slurm.testing.cluster
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.ports import free_port

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
    """One node called ``localhost`` with partition ``debug``.

    cpus / mem_mb: what the node advertises (defaults: this machine's, at least 2 CPUs, so that
    2-task jobs fit; slurmd is told to trust the configuration rather than the hardware).
    """

    def __init__(self, root=None, cpus=None, mem_mb=None, start_timeout=60.0):
        self.root = Path(root) if root else None
        self.cpus = cpus or max(2, os.cpu_count() or 1)
        self.mem_mb = mem_mb or max(1024, int(_mem_mb() * 0.8))
        self.start_timeout = start_timeout
        self.procs = {}
        self._logs = []

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

    def activate(self):
        """Point this process (and everything it starts) at the cluster."""
        os.environ.update(self.env())

    def _write_config(self):
        text = TEMPLATE.read_text()
        fields = {
            "USER": getpass.getuser(),
            "CTLD_PORT": str(_free_port()),
            "SLURMD_PORT": str(_free_port()),
            "STATE": str(self.root),
            "CPUS": str(self.cpus),
            "MEM_MB": str(self.mem_mb),
        }
        for key, value in fields.items():
            text = text.replace(f"@{key}@", value)
        # trust the configured CPUs / memory rather than what slurmd detects
        text += "SlurmdParameters=config_overrides\n"
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
        for sub in ("ctld", "slurmd"):
            (self.root / sub).mkdir(exist_ok=True)
        self._write_config()
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        env = self.env()
        try:
            self._spawn("munged", [
                _which("munged"), "--foreground", "--force",
                f"--socket={self.munge_socket}", f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}", f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
            ], env)
            self._wait(self._munge_ok, "munged")
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf_path)], env)
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(self.conf_path)], env)
            self._wait(self._node_ready, "slurmctld/slurmd")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name, cmd, env):
        log = open(self.root / f"{name}.out", "wb")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

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

    def _node_ready(self):
        try:
            out = subprocess.run([_which("sinfo"), "-h", "-o", "%t"], env=self.env(), capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in ("idle", "mix", "alloc")

    def run(self, *cmd, check=True, timeout=60):
        """Run a SLURM client command against this cluster; returns its stdout."""
        out = subprocess.run(list(cmd), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise subprocess.CalledProcessError(out.returncode, cmd, out.stdout, out.stderr)
        return out.stdout

    def cancel_all(self):
        if self.root is None or "slurmctld" not in self.procs:
            return
        try:
            ids = self.run(_which("squeue"), "-h", "-o", "%A", check=False).split()
            if ids:
                self.run(_which("scancel"), *sorted(set(ids)), check=False)
        except (OSError, subprocess.SubprocessError):
            pass

    def stop(self):
        """Cancel the jobs still queued, then end the daemons this object started (slurmd first)."""
        self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

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


def main():
    cluster = LocalSlurmCluster().start()
    print(f"SLURM cluster up in {cluster.root}\n  export SLURM_CONF={cluster.conf_path}\nCtrl-C stops it.", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
        print("SLURM cluster stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
