"""Submit any layerzoo training script to SLURM (or run it locally) through submitit.

    python slurm/launch.py [launcher options] -- <script> [script args]

Examples::

    # 2 nodes x 8 GPUs, one task per GPU, ImageNet RLA-ResNet-50
    python slurm/launch.py --nodes 2 --gpus-per-node 8 --cpus-per-task 10 --mem 0 --time 72:00:00 \\
        --partition gpu -- rlanet/train.py -a rla_resnet50 -b 256 /data/imagenet
    # print the sbatch script only
    python slurm/launch.py --dry-run --nodes 2 --gpus-per-node 8 -- dwnet/main.py --cfg configs/dwnet_tiny.yaml
    # the same job on this machine (2 processes, gloo on CPU)
    python slurm/launch.py --local --tasks-per-node 2 -- dianet/cifar.py -a dia_resnet --depth 20 --demo
    # a job array over a grid of script arguments
    python slurm/launch.py --grid depth=20,29 --grid lr=0.1,0.05 -- dianet/cifar.py -a dia_resnet --demo

Every task of the job sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR (the job's
first node: its name, or its ``NodeAddr`` when the name does not resolve) and MASTER_PORT (a port
found free on that host) and then runs the script in a child process, so the script's own
``torch.distributed`` code (``env://``) sees a torchrun-like world.

Preemption / time limit: SLURM sends SIGUSR2 ahead of the end (``--signal-delay``); submitit's
handler then requeues the job. When the job starts again (also after ``scontrol requeue``) the
script is given ``--resume <its last checkpoint>``, so it continues after the last finished epoch.
The last checkpoint is the file named by the ``last_checkpoint`` pointer that
``common.checkpoint.TrainingCheckpointer`` writes into the script's run folder; folders without a
pointer fall back to the checkpoint file name in the script table.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import glob
import importlib.util
import io
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # run as `python slurm/launch.py`: re-enter through the package so that the job callable is
    # pickled as `slurm.launch.TrainingJob`, importable on the compute nodes
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.ports import free_port  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ScriptSpec",
    "SCRIPTS",
    "LaunchError",
    "TrainingJob",
    "build_parser",
    "main",
    "launch",
    "resolve_script",
    "validate_script_args",
    "expand_grid",
    "sbatch_script",
]


class LaunchError(RuntimeError):
    """A problem found before anything was submitted (printed without a traceback)."""


# --------------------------------------------------------------------------------------------
# Script table: how each entry point names its output folder, its checkpoint and its resume flag.
# A new training script is one more entry here.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ScriptSpec:
    """How the launcher drives one training script.

    path: the script, relative to the repository root.
    dir_option: option strings of the script's output/checkpoint folder flag (the launcher
        rewrites it to give each job-array configuration its own folder).
    dir_default: that flag's default value.
    checkpoint: where the resumable checkpoint lies, a template over ``{dir}`` and the values of
        ``options``; may hold glob wildcards. Its folder is the run folder: the file named by the
        ``last_checkpoint`` pointer there wins; the template itself (newest match) is the fallback
        for folders without a pointer.
    resume_option: the flag that takes the checkpoint file to resume from.
    options: other values the template needs: name -> (option strings, default).
    parser: name of a module-level function of the script that returns its argparse parser
        (used to check the arguments before submitting); None: no check.
    local_rank_option: pass ``<option> <local rank>`` to the script (torch.distributed.launch
        style scripts that insist on the flag); None: the environment variable only.
    known_args_only: the script parses with ``parse_known_args`` (unknown flags are not errors).
    """

    path: str
    dir_option: tuple
    dir_default: str
    checkpoint: str
    resume_option: str = "--resume"
    options: tuple = ()
    parser: str | None = "get_parser"
    local_rank_option: str | None = None
    known_args_only: bool = False

    @property
    def options_dict(self):
        return {name: (tuple(flags), default) for name, flags, default in self.options}


_CLASSIFICATION_DIR = (("-c", "--checkpoint"), "checkpoint")

SCRIPTS = {
    spec.path: spec
    for spec in [
        # pytorch-classification lineage (CIFAR): <checkpoint>/checkpoint.pth.tar every epoch
        ScriptSpec("dianet/cifar.py", *_CLASSIFICATION_DIR, "{dir}/checkpoint.pth.tar"),
        ScriptSpec("dla/cifar.py", *_CLASSIFICATION_DIR, "{dir}/checkpoint.pth.tar"),
        # pytorch/examples ImageNet lineage: <work-dir>/<arch>_<action>/checkpoint.pth.tar
        ScriptSpec("dla/train.py", ("--work-dir",), "work_dirs", "{dir}/{arch}_{action}/checkpoint.pth.tar",
                   options=(("arch", ("-a", "--arch"), "dla_50"), ("action", ("--action",), ""))),
        ScriptSpec("rlanet/train.py", ("--work-dir",), "work_dirs", "{dir}/{arch}_{action}/checkpoint.pth.tar",
                   options=(("arch", ("-a", "--arch"), "rla_resnet50"), ("action", ("--action",), ""))),
        ScriptSpec("rlanet/train_light.py", ("--work-dir",), "work_dirs", "{dir}/{arch}_{action}/checkpoint.pth.tar",
                   options=(("arch", ("-a", "--arch"), "dsrla_mobilenetv2"), ("action", ("--action",), ""))),
        # Swin lineage: <output>/<MODEL.NAME>/<tag>/ckpt_epoch_<e>.pth, --local_rank required
        ScriptSpec("dwnet/main.py", ("--output",), "output", "{dir}/*/{tag}/ckpt_epoch_*.pth",
                   options=(("tag", ("--tag",), "default"),), local_rank_option="--local_rank",
                   known_args_only=True),
        # (Deformable-)DETR lineage: <output_dir>/checkpoint.pth every epoch
        ScriptSpec("dacdetr/main.py", ("--output_dir",), "", "{dir}/checkpoint.pth", parser="get_args_parser"),
    ]
}


def known_scripts():
    return sorted(SCRIPTS)


def resolve_script(script, root=None):
    """Map what the user typed (relative, ./-prefixed or absolute path) onto the table."""
    root = Path(root or REPO_ROOT).resolve()
    p = Path(script)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, root / p]
    for cand in candidates:
        try:
            rel = cand.resolve().relative_to(root).as_posix()
        except ValueError:
            continue
        if rel in SCRIPTS:
            return SCRIPTS[rel], root / rel
    norm = os.path.normpath(script).replace(os.sep, "/")
    if norm in SCRIPTS:
        return SCRIPTS[norm], root / norm
    raise LaunchError(
        f"unknown training script {script!r}; the launcher knows: " + ", ".join(known_scripts())
        + " (a new script is one entry in SCRIPTS in slurm/launch.py)"
    )


# --------------------------------------------------------------------------------------------
# Argument helpers
# --------------------------------------------------------------------------------------------
def _find_option(args, flags):
    """Index and value of the last occurrence of any of ``flags`` (``--f v``, ``--f=v``, ``-cv``)."""
    found = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            break
        for f in flags:
            if a == f and i + 1 < len(args):
                found = (i, 2, args[i + 1])
                i += 1
                break
            if f.startswith("--") and a.startswith(f + "="):
                found = (i, 1, a[len(f) + 1:])
                break
            if not f.startswith("--") and len(f) == 2 and a.startswith(f) and len(a) > 2 and not a.startswith("--"):
                found = (i, 1, a[2:])
                break
        i += 1
    return found


def option_value(args, flags, default=None):
    hit = _find_option(args, flags)
    return default if hit is None else hit[2]


def set_option(args, flags, value):
    """Return ``args`` with every occurrence of ``flags`` removed and ``flags[-1] value`` appended."""
    args = list(args)
    while True:
        hit = _find_option(args, flags)
        if hit is None:
            break
        idx, n, _ = hit
        del args[idx:idx + n]
    return args + [flags[-1], str(value)]


def checkpoint_path(spec, args):
    """The newest checkpoint file the script would resume from, or None: the file the run folder's
    ``last_checkpoint`` pointer names, else the newest match of the table's file name."""
    from common.checkpoint import find_last_checkpoint

    values = {"dir": option_value(args, spec.dir_option, spec.dir_default) or "."}
    for name, (flags, default) in spec.options_dict.items():
        values[name] = option_value(args, flags, default) or ""
    pattern = spec.checkpoint.format(**values)
    folder = os.path.dirname(pattern) or "."
    folders = [f for f in glob.glob(folder) if os.path.isdir(f)] if glob.has_magic(folder) else [folder]
    pointed = [p for p in (find_last_checkpoint(f) for f in folders) if p is not None]
    if pointed:
        return max(pointed, key=lambda m: (os.path.getmtime(m), _natural_key(m)))
    if glob.has_magic(pattern):
        matches = [m for m in glob.glob(pattern) if os.path.isfile(m)]
        if not matches:
            return None
        return max(matches, key=lambda m: (os.path.getmtime(m), _natural_key(m)))
    return pattern if os.path.isfile(pattern) else None


def _natural_key(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _flag_for(key):
    return key if key.startswith("-") else "--" + key


def expand_grid(grid_items):
    """``["depth=20,29", "lr=0.1"]`` -> list of (label, [flag, value, ...]) over the cartesian grid."""
    axes = []
    for item in grid_items or []:
        if "=" not in item:
            raise LaunchError(f"--grid expects NAME=V1,V2,... (got {item!r})")
        key, vals = item.split("=", 1)
        values = [v for v in vals.split(",") if v != ""]
        if not key.strip("-") or not values:
            raise LaunchError(f"--grid expects NAME=V1,V2,... (got {item!r})")
        axes.append((_flag_for(key), key.lstrip("-"), values))
    if not axes:
        return [("", [])]
    out = []
    for combo in itertools.product(*[[(flag, name, v) for v in values] for flag, name, values in axes]):
        args, parts = [], []
        for flag, name, v in combo:
            args += [flag, v]
            parts.append(f"{name}={v}")
        label = re.sub(r"[^A-Za-z0-9_.=+-]", "_", "_".join(parts))
        out.append((label, args))
    return out


def apply_grid_point(spec, args, label, grid_args):
    """Script args for one configuration: grid flags replace the base ones, own output folder."""
    args = list(args)
    for i in range(0, len(grid_args), 2):
        args = set_option(args, (grid_args[i],), grid_args[i + 1])
    if label:
        base = option_value(args, spec.dir_option, spec.dir_default) or "."
        args = set_option(args, spec.dir_option, os.path.join(base, label))
    return args


# --------------------------------------------------------------------------------------------
# Checking the script's arguments before submitting
# --------------------------------------------------------------------------------------------
def _warn(msg):
    sys.stderr.write(f"slurm/launch.py: warning: {msg}\n")


def _load_parser(spec, script_path):
    if spec.parser is None:
        return None, "the script table names no parser function"
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    mod_name = "_layerzoo_check_" + re.sub(r"\W", "_", spec.path)
    try:
        mspec = importlib.util.spec_from_file_location(mod_name, script_path)
        module = importlib.util.module_from_spec(mspec)
        with contextlib.redirect_stdout(io.StringIO()):
            mspec.loader.exec_module(module)
    except Exception as exc:  # the script may need packages only the compute nodes have
        return None, f"importing {spec.path} failed ({type(exc).__name__}: {exc})"
    fn = getattr(module, spec.parser, None)
    if fn is None:
        return None, f"{spec.path} has no {spec.parser}()"
    parser = fn()
    if isinstance(parser, tuple):  # some scripts return (parser, extra)
        parser = parser[0]
    if not isinstance(parser, argparse.ArgumentParser):
        return None, f"{spec.path}:{spec.parser}() did not return an argparse parser"
    return parser, ""


def validate_script_args(spec, script_path, args, strict=True):
    """Parse ``args`` with the script's own parser. Raises LaunchError on a flag error; returns
    False (with a warning) when the parser cannot be obtained."""
    parser, why = _load_parser(spec, script_path)
    if parser is None:
        _warn(f"not checking the arguments of {spec.path}: {why}")
        return False
    check_args = list(args)
    if spec.local_rank_option and _find_option(check_args, (spec.local_rank_option,)) is None:
        check_args += [spec.local_rank_option, "0"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if spec.known_args_only:
                parser.parse_known_args(check_args)
            else:
                parser.parse_args(check_args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            msg = err.getvalue().strip().splitlines()
            raise LaunchError(f"{spec.path} rejects its arguments {shlex.join(args)!r}:\n  "
                              + "\n  ".join(msg[-3:] or ["(argparse error)"])) from None
    return True


# --------------------------------------------------------------------------------------------
# The job: one instance per task (rank) on the compute nodes
# --------------------------------------------------------------------------------------------
def _free_port():
    return free_port("")  # any interface: other nodes connect to it


def node_address(name):
    """An address the other nodes reach node ``name`` at: the name itself when it resolves (the usual
    case), else the node's ``NodeAddr`` from ``scontrol show node`` (clusters whose node names are not
    host names, such as the test cluster's ``n1``, ``n2``), else the name as it is."""
    try:
        socket.getaddrinfo(name, None)
        return name
    except (OSError, UnicodeError):
        pass
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", name], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return name
    m = re.search(r"(?:^|\s)NodeAddr=(\S+)", out.stdout)
    return m.group(1) if out.returncode == 0 and m else name


def _rendezvous(folder, key, master_host, is_master, timeout=600.0):
    """Global rank 0 finds the address of the job's first node (``master_host``) and a free port on its
    host and publishes both in the (shared) job folder; every rank returns ``(address, port)``."""
    path = Path(folder) / f".master_port.{key}"
    if is_master:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(f"{node_address(master_host)} {_free_port()}")
        os.replace(tmp, path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            addr, port = path.read_text().split()
            return addr, int(port)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no master address and port published in {path} after {timeout:.0f} s")
        time.sleep(0.2)


def _ignore_preemption_signal():
    # the launcher process (submitit) handles SIGUSR2 and requeues; the script must survive it
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class TrainingJob:
    """Callable that submitit runs once per task. Picklable; ``checkpoint()`` makes it requeueable
    (the submitit ``Checkpointable`` protocol)."""

    def __init__(self, spec, script_path, args, cwd, python=None, restarts=0, auto_resume=True):
        self.spec = spec
        self.script_path = str(script_path)
        self.args = list(args)
        self.cwd = str(cwd)
        self.python = python
        self.restarts = restarts
        self.auto_resume = auto_resume

    # -- submitit protocol -------------------------------------------------------------------
    def checkpoint(self, *args, **kwargs):
        import submitit

        nxt = copy.copy(self)
        nxt.restarts = self.restarts + 1
        nxt.args = self._with_resume(self.args)
        return submitit.helpers.DelayedSubmission(nxt, *args, **kwargs)

    def __call__(self):
        import submitit

        env = submitit.JobEnvironment()
        under_slurm = env.cluster == "slurm"
        restart_count = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        args = list(self.args)
        resumed_from = None
        if self.auto_resume and (restart_count > 0 or self.restarts > 0):
            args = self._with_resume(args)
            hit = _find_option(args, (self.spec.resume_option,))
            resumed_from = hit[2] if hit else None

        nodes = env.num_nodes
        world = env.num_tasks
        local_world = max(1, world // max(1, nodes))
        if under_slurm:
            master = env.hostnames[0] if env.hostnames else "127.0.0.1"
        else:
            master = "127.0.0.1"
        key = f"{env.job_id}.{restart_count}.{self.restarts}"
        if world > 1:
            master, port = _rendezvous(env.paths.folder, key, master, env.global_rank == 0)
        else:
            master, port = node_address(master), _free_port()

        child_env = dict(os.environ)
        child_env.update({
            "RANK": str(env.global_rank),
            "LOCAL_RANK": str(env.local_rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(local_world),
            "GROUP_RANK": str(env.node),
            "NODE_RANK": str(env.node),
            "MASTER_ADDR": master,
            "MASTER_PORT": str(port),
        })
        pp = child_env.get("PYTHONPATH", "")
        child_env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
        if self.spec.local_rank_option:
            args = set_option(args, (self.spec.local_rank_option,), env.local_rank)

        cmd = [self.python or sys.executable, "-u", self.script_path, *args]
        print(f"[launch] rank {env.global_rank}/{world} (node {env.node}, local rank {env.local_rank}) "
              f"master {master}:{port}" + (f", resuming from {resumed_from}" if resumed_from else ""), flush=True)
        print("[launch] " + shlex.join(cmd), flush=True)
        proc = subprocess.Popen(cmd, cwd=self.cwd, env=child_env, preexec_fn=_ignore_preemption_signal)
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # we are leaving early (requeue, exception): take the script along
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if rc < 0 and under_slurm and -rc in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT):
            # SLURM is stopping the job (cancel, requeue, preemption): it will kill this process
            # shortly; do not report a failure that a requeued run would have to overwrite.
            print(f"[launch] script stopped by signal {-rc}; waiting for SLURM to end the task", flush=True)
            time.sleep(600)
        if rc != 0:
            raise RuntimeError(f"{self.spec.path} exited with code {rc} on rank {env.global_rank}")
        return {
            "rank": env.global_rank,
            "world_size": world,
            "node": os.environ.get("SLURMD_NODENAME") or env.hostname,
            "master": f"{master}:{port}",
            "returncode": rc,
            "args": args,
            "checkpoint": self._checkpoint_file(args),
            "resumed_from": resumed_from,
        }

    # -- helpers --------------------------------------------------------------------------------
    def _checkpoint_file(self, args):
        with _chdir(self.cwd):
            path = checkpoint_path(self.spec, args)
        return None if path is None else os.path.join(self.cwd, path)

    def _with_resume(self, args):
        ckpt = self._checkpoint_file(args)
        if ckpt is None:
            return list(args)
        return set_option(args, (self.spec.resume_option,), ckpt)

    def __repr__(self):
        return f"TrainingJob({self.spec.path} {shlex.join(self.args)})"


@contextlib.contextmanager
def _chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def _parse_time(text):
    """Minutes from ``90``, ``1:30:00``, ``2-00:00:00`` or ``45:00`` (SLURM formats)."""
    text = str(text).strip()
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad time {text!r} (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    days = int(days or 0)
    if b is None and c is None:
        minutes = int(a) if not days else int(a) * 60  # "D-HH"
    elif c is None:
        minutes = int(a) + (int(b) > 0) if not days else int(a) * 60 + int(b)  # MM:SS / D-HH:MM
    else:
        minutes = int(a) * 60 + int(b) + (int(c) > 0)
    return days * 24 * 60 + minutes


def _parse_sbatch_line(line):
    """``--mail-type=END``, ``--exclusive``, ``#SBATCH --gres gpu:2`` -> (key, value)."""
    line = line.strip()
    if line.startswith("#SBATCH"):
        line = line[len("#SBATCH"):].strip()
    if not line.startswith("--"):
        raise LaunchError(f"--sbatch expects a long sbatch option such as --exclusive or --mail-type=END (got {line!r})")
    body = line[2:]
    if "=" in body:
        key, value = body.split("=", 1)
    elif " " in body:
        key, value = body.split(None, 1)
    else:
        key, value = body, True
    return key.strip().replace("-", "_"), value if value is True else value.strip()


def build_parser():
    p = argparse.ArgumentParser(
        prog="slurm/launch.py",
        description="Submit a layerzoo training script to SLURM through submitit (or run it locally).",
        usage="python slurm/launch.py [options] -- SCRIPT [SCRIPT ARGS ...]",
        epilog="Known scripts: " + ", ".join(known_scripts()),
    )
    g = p.add_argument_group("resources")
    g.add_argument("--nodes", type=int, default=1)
    g.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node; one task per GPU unless --tasks-per-node")
    g.add_argument("--tasks-per-node", type=int, default=None, help="processes (ranks) per node (default: GPUs per node, or 1)")
    g.add_argument("--cpus-per-task", type=int, default=None)
    g.add_argument("--mem", default=None, help="memory per node, SLURM syntax: 64G, 500000M, 0 = all")
    g.add_argument("--time", type=_parse_time, default=60, help="time limit: minutes, HH:MM:SS or D-HH:MM:SS (default 60)")
    g.add_argument("--partition", default=None)
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--exclude", default=None, help="nodes to avoid")
    g.add_argument("--sbatch", action="append", default=[], metavar="'--OPTION[=VALUE]'",
                   help="extra #SBATCH line, repeatable (e.g. --sbatch=--exclusive --sbatch=--mail-type=END)")
    g.add_argument("--setup", action="append", default=[], metavar="SHELL_LINE",
                   help="shell line run in the batch script before the tasks start (module load ..., repeatable)")
    j = p.add_argument_group("job")
    j.add_argument("--job-name", default=None, help="default: derived from the script path")
    j.add_argument("--output", default="slurm_logs", help="folder for submitit's logs and pickles (a %%j sub-folder per job)")
    j.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which the job is signalled to requeue (default 120)")
    j.add_argument("--max-timeouts", type=int, default=10, help="how many times a timed-out job requeues itself")
    j.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                   help="job array over script flags, repeatable (cartesian product); each point gets its own output folder")
    j.add_argument("--array-parallelism", type=int, default=64)
    j.add_argument("--python", default=None, help="python on the compute nodes (default: this interpreter)")
    j.add_argument("--no-resume", action="store_true", help="do not add --resume when a requeued job restarts")
    m = p.add_argument_group("mode")
    mode = m.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the sbatch script and exit")
    mode.add_argument("--local", action="store_true", help="run the job on this machine with submitit's local executor")
    m.add_argument("--wait", action="store_true", help="wait for the job(s) to finish and report the result")
    m.add_argument("--no-check", action="store_true", help="do not check the script's arguments before submitting")
    return p


def split_argv(argv):
    argv = list(argv)
    if "--" not in argv:
        raise LaunchError("put the training script after '--': python slurm/launch.py [options] -- SCRIPT [ARGS]")
    i = argv.index("--")
    rest = argv[i + 1:]
    if not rest:
        raise LaunchError("no training script after '--'; known scripts: " + ", ".join(known_scripts()))
    return argv[:i], rest[0], rest[1:]


def slurm_parameters(opts, job_name):
    """Native submitit SlurmExecutor parameters."""
    tasks = opts.tasks_per_node or max(1, opts.gpus_per_node)
    params = {
        "job_name": job_name,
        "time": opts.time,
        "nodes": opts.nodes,
        "ntasks_per_node": tasks,
        "signal_delay_s": opts.signal_delay,
        "array_parallelism": opts.array_parallelism,
    }
    optional = {
        "cpus_per_task": opts.cpus_per_task,
        "gpus_per_node": opts.gpus_per_node or None,
        "mem": opts.mem,
        "partition": opts.partition,
        "account": opts.account,
        "qos": opts.qos,
        "constraint": opts.constraint,
        "exclude": opts.exclude,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    extra = dict(_parse_sbatch_line(line) for line in opts.sbatch)
    if extra:
        params["additional_parameters"] = extra
    setup = [f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    setup += list(opts.setup)
    params["setup"] = setup
    return params


def sbatch_script(params, folder, python=None, map_count=None):
    """The sbatch file submitit would write for these parameters."""
    from submitit.slurm import slurm as sslurm

    python = python or shlex.quote(sys.executable)
    command = " ".join([python, "-u -m submitit.core._submit", shlex.quote(str(folder))])
    params = dict(params)
    if map_count and map_count > 1:
        params["map_count"] = map_count
    return sslurm._make_sbatch_string(command=command, folder=folder, **params)


def make_executor(opts, params, folder, local):
    import submitit

    if local:
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        tasks = opts.tasks_per_node or max(1, opts.gpus_per_node)
        ex.update_parameters(timeout_min=opts.time, tasks_per_node=tasks, nodes=1,
                             gpus_per_node=opts.gpus_per_node, name=params["job_name"])
        return ex
    kw = {"slurm_max_num_timeout": opts.max_timeouts}
    if opts.python:
        kw["slurm_python"] = opts.python
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm", **kw)
    ex.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
    return ex


def _no_slurm_message():
    missing = [b for b in ("sbatch", "srun") if shutil.which(b) is None]
    return ("SLURM is not available here: " + " and ".join(f"`{b}`" for b in missing)
            + (" is" if len(missing) == 1 else " are") + " not on PATH. Run this on a SLURM login node, "
            "pass --local to run the job on this machine, or --dry-run to print the sbatch script.")


def prepare(argv):
    """Parse the command line and build everything short of submitting."""
    launcher_argv, script, script_args = split_argv(argv)
    opts = build_parser().parse_args(launcher_argv)
    spec, script_path = resolve_script(script)
    if not script_path.is_file():
        if not opts.dry_run:
            raise LaunchError(f"{spec.path} is a known script but {script_path} does not exist")
        _warn(f"{script_path} does not exist (dry run: printing the sbatch script anyway)")
        opts.no_check = True
    if opts.local and opts.nodes != 1:
        raise LaunchError("--local runs on this machine only: use --nodes 1")
    if opts.nodes < 1 or (opts.tasks_per_node is not None and opts.tasks_per_node < 1):
        raise LaunchError("--nodes and --tasks-per-node must be >= 1")
    points = [(label, apply_grid_point(spec, script_args, label, gargs)) for label, gargs in expand_grid(opts.grid)]
    if not opts.no_check:
        for _, args in points:
            if not validate_script_args(spec, script_path, args):
                break  # parser unavailable: warned once
    job_name = opts.job_name or ("lz-" + spec.path.rsplit(".", 1)[0].replace("/", "-"))
    params = slurm_parameters(opts, job_name)
    folder = Path(opts.output).absolute() / "%j"
    return opts, spec, script_path, points, params, folder


def _require_submitit():
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise LaunchError("submitit is not installed: slurm/launch.py needs the 'slurm' extra; install it with "
                          "pip install -e '.[slurm]'") from None


def launch(argv, out=None):
    """Do what the command line says; returns the submitit jobs (an empty list for --dry-run).
    Raises LaunchError for anything found wrong before submission."""
    out = out or sys.stdout
    opts, spec, script_path, points, params, folder = prepare(argv)
    _require_submitit()
    if opts.dry_run:
        out.write(sbatch_script(params, folder, opts.python, map_count=len(points)) + "\n")
        for label, args in points:
            out.write(f"# task{' ' + label if label else ''}: {spec.path} {shlex.join(args)}\n")
        return []
    if not opts.local and (shutil.which("sbatch") is None or shutil.which("srun") is None):
        raise LaunchError(_no_slurm_message())
    cwd = os.getcwd()
    if opts.local:
        pp = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + pp if pp else "")
    ex = make_executor(opts, params, folder, opts.local)
    with contextlib.suppress(OSError):
        folder.rmdir()  # submitit creates the literal "%j" folder; the jobs use their own
    calls = [TrainingJob(spec, script_path, args, cwd, python=opts.python, auto_resume=not opts.no_resume)
             for _, args in points]
    try:
        if len(calls) == 1:
            jobs = [ex.submit(calls[0])]
        else:
            with ex.batch():
                jobs = [ex.submit(c) for c in calls]
    except Exception as exc:  # sbatch refused (bad partition, controller down, ...)
        detail = getattr(exc, "stderr", None) or str(exc)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise LaunchError(f"submission failed: {detail.strip()}") from None
    kind = "local job" if opts.local else "job"
    tasks = params["ntasks_per_node"] * (1 if opts.local else params["nodes"])
    for (label, args), job in zip(points, jobs):
        out.write(f"Submitted {kind} {job.job_id}{' [' + label + ']' if label else ''}: {spec.path} "
                  f"{shlex.join(args)} ({tasks} task{'s' if tasks > 1 else ''})\n")
        out.write(f"  logs: {str(job.paths.stdout).replace('%t', '<rank>')} (+ .err)\n")
        ck = option_value(args, spec.dir_option, spec.dir_default)
        if ck:
            out.write(f"  output folder: {os.path.join(cwd, ck)}\n")
    out.flush()
    if opts.wait:
        failed = []
        for job in jobs:
            try:
                res = job.results()
                out.write(f"job {job.job_id} finished; checkpoint: {res[0].get('checkpoint')}\n")
            except Exception as exc:
                failed.append(job.job_id)
                out.write(f"job {job.job_id} failed: {exc}\n")
        if failed:
            raise LaunchError("failed job(s): " + ", ".join(failed))
    return jobs


def main(argv=None, out=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        launch(argv, out)
    except LaunchError as exc:
        sys.stderr.write(f"slurm/launch.py: error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    from slurm.launch import main as _main  # the package copy, so pickles name slurm.launch

    sys.exit(_main())
