"""torch.distributed set-up shared by every script.

Works with ``torchrun``, ``python -m torch.distributed.launch`` (``--local_rank`` / ``--local-rank`` argument or
``LOCAL_RANK``), and any launcher that exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
(``slurm/launch.py`` does). Without those variables everything runs as a single process.

:func:`spawn` starts the processes itself (``torch.multiprocessing``), as the pytorch/examples ImageNet script's
``--multiprocessing-distributed`` does; :func:`add_examples_dist_args` + :func:`launch_examples` map that
script's flags (``--world-size``, ``--rank``, ``--dist-url``, ``--dist-backend``, ``--multiprocessing-distributed``,
``--gpu``) onto these launch modes.
"""
import argparse
import os
import random
import time
from dataclasses import dataclass
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .ports import free_port

__all__ = [
    "DistEnv",
    "add_dist_args",
    "init_distributed",
    "is_dist",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "all_reduce_mean",
    "all_gather_object",
    "cleanup",
    "free_port",
    "spawn",
    "add_examples_dist_args",
    "launch_examples",
]


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    distributed: bool = False
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0


def add_dist_args(parser):
    """Accept the launcher's local-rank argument in both spellings."""
    default = int(os.environ.get("LOCAL_RANK", -1))
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=default,
                        help=argparse.SUPPRESS)
    return parser


def _pick_device(local_rank, device):
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None and torch.cuda.is_available():
            device = torch.device("cuda", max(local_rank, 0) % torch.cuda.device_count())
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", max(local_rank, 0) % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(local_rank=None, device=None, backend=None):
    """Initialise the default process group when launched with several processes.

    ``device``: None picks CUDA when present, else CPU; "cpu" forces CPU (gloo).
    """
    if local_rank is None or local_rank < 0:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    dev = _pick_device(local_rank, device)
    if world_size <= 1:
        return DistEnv(0, local_rank, 1, False, dev)
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistEnv(rank, local_rank, world_size, True, dev)


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def is_main_process():
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor):
    """Sum over processes (returns a new tensor; identity when single-process)."""
    tensor = tensor.clone()
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor):
    return all_reduce_sum(tensor) / get_world_size()


def agree_on_seed(seed, saved=None):
    """The run's seed: ``seed`` when given, else ``saved`` (a resumed checkpoint's), else a random one in
    1..10000 as the official scripts draw it; with several processes every rank takes rank 0's value, so
    all shuffle and augment alike."""
    if seed is not None:
        return seed
    seed = saved if saved is not None else random.randint(1, 10000)
    return all_gather_object(seed)[0] if is_dist() else seed


def all_gather_object(obj):
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup():
    if is_dist():
        dist.destroy_process_group()


# ---------------------------------------------------------------- processes started here (mp.spawn)
def _parse_dist_url(url):
    """``tcp://HOST:PORT`` -> (HOST, PORT); ``env://`` -> MASTER_ADDR / MASTER_PORT of the environment."""
    parsed = urlparse(url)
    if parsed.scheme == "env":
        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            raise ValueError(f"--dist-url {url!r} needs MASTER_ADDR and MASTER_PORT in the environment")
        return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "tcp" or not parsed.hostname or port is None:
        raise ValueError(f"--dist-url must be tcp://HOST:PORT or env://, got {url!r}")
    return parsed.hostname, port


def _spawned(local_rank, main_fn, nprocs, node_rank, world_size, addr, port, backend, device, args):
    rank = node_rank * nprocs + local_rank
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(local_rank), LOCAL_WORLD_SIZE=str(nprocs))
    env = init_distributed(local_rank, device=device, backend=backend)
    try:
        main_fn(env, *args)
    finally:
        cleanup()


def spawn(main_fn, nprocs, args=(), *, nnodes=1, node_rank=0, dist_url=None, backend=None, device=None,
          timeout=None):
    """Run ``main_fn(env, *args)`` in ``nprocs`` new processes of this node and wait for them.

    Process ``i`` gets RANK = ``node_rank * nprocs + i``, WORLD_SIZE = ``nnodes * nprocs``, LOCAL_RANK = ``i``,
    MASTER_ADDR / MASTER_PORT from ``dist_url`` (``tcp://HOST:PORT``, or ``env://``; default 127.0.0.1 and a free
    port, single node only), then :func:`init_distributed` (NCCL on GPUs, gloo on CPU unless ``backend``; the
    GPU is ``cuda:i``) and ``env`` is its :class:`DistEnv`; the process group is destroyed afterwards. A world of
    one runs ``main_fn`` without a process group. ``main_fn`` and ``args`` must be picklable (a module-level
    function). A failing process stops the others and its error is re-raised here; ``timeout`` (seconds) stops
    all of them and raises ``TimeoutError`` instead of waiting for ever.
    """
    if dist_url:
        addr, port = _parse_dist_url(dist_url)
    elif nnodes > 1:
        raise ValueError("spawn over several nodes needs dist_url (tcp://HOST:PORT of node 0)")
    else:
        addr, port = "127.0.0.1", free_port()
    ctx = mp.start_processes(
        _spawned, args=(main_fn, nprocs, node_rank, nnodes * nprocs, addr, port, backend, device, tuple(args)),
        nprocs=nprocs, join=False, start_method="spawn")
    deadline = None if timeout is None else time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if deadline is not None and time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in ctx.processes:
                proc.join(10)
            raise TimeoutError(f"spawned processes still running after {timeout} s; stopped them")


# ---------------------------------------------------------------- the pytorch/examples ImageNet flags
def add_examples_dist_args(parser, world_size=-1, dist_backend="nccl", spawn_flags=True):
    """The distributed flags of the pytorch/examples ImageNet script (defaults as there): ``--world-size``
    (number of nodes; with ``--multiprocessing-distributed`` multiplied by the processes per node),
    ``--rank`` (node rank), ``--dist-url``, ``--dist-backend``, ``--gpu``, ``--multiprocessing-distributed``;
    ``spawn_flags=False`` leaves out ``--rank`` and ``--multiprocessing-distributed`` (RLA-Net's
    ``train_light.py``). Also accepts the ``torch.distributed.launch`` local rank (:func:`add_dist_args`)."""
    parser.add_argument("--world-size", default=world_size, type=int,
                        help="number of nodes for distributed training")
    if spawn_flags:
        parser.add_argument("--rank", default=-1, type=int, help="node rank for distributed training")
    parser.add_argument("--dist-url", default="tcp://127.0.0.1:12345", type=str,
                        help="url used to set up distributed training (tcp://HOST:PORT or env://)")
    parser.add_argument("--dist-backend", default=dist_backend, type=str,
                        help="distributed backend (gloo is used on CPU)")
    parser.add_argument("--gpu", default=None, type=int, help="GPU id to use")
    if spawn_flags:
        parser.add_argument("--multiprocessing-distributed", action="store_true",
                            help="start one process per GPU on this node (one on a CPU-only node) and use DDP")
    return add_dist_args(parser)


def launch_examples(main_fn, args, nprocs=None, device=None, timeout=None):
    """Run ``main_fn(env, args)`` in the launch mode that the pytorch/examples flags in ``args`` ask for.

    * ``--multiprocessing-distributed``: :func:`spawn` ``nprocs`` processes (default: the GPUs of this node, one
      on a CPU-only node) with node rank ``--rank`` and world size ``nprocs * --world-size``, rendezvous at
      ``--dist-url``.
    * launched by torchrun / ``torch.distributed.launch`` / SLURM (WORLD_SIZE in the environment): their ranks.
    * ``--world-size N > 1`` without it: this process is rank ``--rank`` of ``N``, rendezvous at ``--dist-url``.
    * otherwise one process, no process group.

    ``--dist-backend`` applies on GPUs; CPU processes use gloo. ``device`` as in :func:`init_distributed`
    (``--gpu`` picks the GPU of a single process). Dividing ``-b`` / ``-j`` by the processes per node is left to
    ``main_fn`` (``env.world_size``). Returns ``main_fn``'s result when it ran in this process, None when spawned.
    """
    world = getattr(args, "world_size", -1)
    node_rank = max(getattr(args, "rank", 0) or 0, 0)
    gpu = getattr(args, "gpu", None)
    if device is None and gpu is not None and torch.cuda.is_available():
        device = f"cuda:{gpu}"
    on_gpu = _pick_device(max(gpu or 0, 0), device).type == "cuda"
    backend = getattr(args, "dist_backend", None) if on_gpu else "gloo"
    if getattr(args, "multiprocessing_distributed", False):
        nprocs = nprocs or (torch.cuda.device_count() if on_gpu else 1)
        return spawn(main_fn, nprocs, (args,), nnodes=max(world, 1), node_rank=node_rank, dist_url=args.dist_url,
                     backend=backend, device=device if not on_gpu else None, timeout=timeout)
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 and world > 1:
        addr, port = _parse_dist_url(args.dist_url)
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(node_rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(max(gpu or 0, 0)))
    env = init_distributed(getattr(args, "local_rank", -1), device=device, backend=backend)
    try:
        return main_fn(env, args)
    finally:
        cleanup()
