"""torch.distributed set-up shared by every script.

Works with ``torchrun``, ``python -m torch.distributed.launch`` (``--local_rank`` / ``--local-rank`` argument or
``LOCAL_RANK``), and any launcher that exports RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT
(``slurm/launch.py`` does). Without those variables everything runs as a single process.
"""
import argparse
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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


def all_gather_object(obj):
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup():
    if is_dist():
        dist.destroy_process_group()
