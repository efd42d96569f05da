"""Small helpers shared by the DAC-DETR model, criterion and training loop.

* :class:`NestedTensor` -- a batch of padded images plus its padding mask (True = padding);
* :func:`nested_tensor_from_tensor_list` -- pads a list of ``(C, H, W)`` images into one batch;
* :func:`inverse_sigmoid` -- the clamped logit used by the iterative box refinement;
* distributed helpers that degrade to single-process behaviour when ``torch.distributed``
  is not initialised (no CUDA assumptions anywhere);
* :class:`SmoothedValue` / :class:`MetricLogger` -- the DETR-style console metric logger.
"""
from __future__ import annotations

import datetime
import numbers
import os
import subprocess
import time
from collections import defaultdict, deque
from typing import List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from common.engine import accuracy as _common_accuracy
from common.distributed import (all_gather_object, all_reduce_mean, all_reduce_sum, get_rank,
                                get_world_size, is_dist, is_main_process)

__all__ = [
    "NestedTensor",
    "nested_tensor_from_tensor_list",
    "collate_fn",
    "inverse_sigmoid",
    "accuracy",
    "interpolate",
    "is_dist_avail_and_initialized",
    "get_world_size",
    "get_rank",
    "get_local_size",
    "get_local_rank",
    "is_main_process",
    "save_on_master",
    "all_gather",
    "reduce_dict",
    "get_total_grad_norm",
    "SmoothedValue",
    "MetricLogger",
    "get_sha",
]


# ----------------------------------------------------------------------------- tensors
class NestedTensor:
    """Images ``tensors`` (B, C, H, W) with a boolean ``mask`` (B, H, W), True on padded pixels."""

    def __init__(self, tensors: Tensor, mask: Optional[Tensor]):
        self.tensors = tensors
        self.mask = mask

    def to(self, device, non_blocking: bool = False) -> "NestedTensor":
        tensors = self.tensors.to(device, non_blocking=non_blocking)
        mask = None if self.mask is None else self.mask.to(device, non_blocking=non_blocking)
        return NestedTensor(tensors, mask)

    def record_stream(self, *args, **kwargs):
        self.tensors.record_stream(*args, **kwargs)
        if self.mask is not None:
            self.mask.record_stream(*args, **kwargs)

    def decompose(self):
        return self.tensors, self.mask

    @property
    def device(self):
        return self.tensors.device

    def __repr__(self):
        return f"NestedTensor(tensors={tuple(self.tensors.shape)}, mask={None if self.mask is None else tuple(self.mask.shape)})"


def nested_tensor_from_tensor_list(tensor_list) -> NestedTensor:
    """Pad images of possibly different sizes to a common (max) size.

    ``tensor_list`` is a list of ``(C, H, W)`` tensors or a ``(B, C, H, W)`` tensor (iterated
    over its first dimension). Images are copied into the top-left corner of a zero tensor of
    their dtype/device; the mask is False on image pixels and True on the padding.
    """
    images = list(tensor_list)
    if len(images) == 0 or images[0].ndim != 3:
        raise ValueError("nested_tensor_from_tensor_list expects (C, H, W) images")
    channels = max(int(img.shape[0]) for img in images)
    height = max(int(img.shape[1]) for img in images)
    width = max(int(img.shape[2]) for img in images)
    first = images[0]
    batch = torch.zeros((len(images), channels, height, width), dtype=first.dtype, device=first.device)
    mask = torch.ones((len(images), height, width), dtype=torch.bool, device=first.device)
    for img, dst, m in zip(images, batch, mask):
        c, h, w = img.shape
        dst[:c, :h, :w].copy_(img)
        m[:h, :w] = False
    return NestedTensor(batch, mask)


def collate_fn(batch):
    """DataLoader collate: ``[(img, target), ...]`` -> ``(NestedTensor, (target, ...))``."""
    columns = list(zip(*batch))
    columns[0] = nested_tensor_from_tensor_list(columns[0])
    return tuple(columns)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to [0, 1] and both terms floored at ``eps``."""
    x = x.clamp(min=0, max=1)
    num = x.clamp(min=eps)
    den = (1 - x).clamp(min=eps)
    return torch.log(num / den)


@torch.no_grad()
def accuracy(output: Tensor, target: Tensor, topk=(1,)):
    """Top-k precision in percent for each k (zeros when there is no target)."""
    return _common_accuracy(output, target, topk)


def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """``F.interpolate`` (empty batches are supported natively by current PyTorch)."""
    return F.interpolate(input, size, scale_factor, mode, align_corners)


def get_total_grad_norm(parameters, norm_type=2):
    """Norm of all gradients together (parameters without gradient are skipped)."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros([])
    norm_type = float(norm_type)
    device = grads[0].device
    return torch.norm(torch.stack([torch.norm(g, norm_type).to(device) for g in grads]), norm_type)


# ----------------------------------------------------------------------------- distributed
# The process-group queries are those of ``common.distributed`` (re-exported under the official
# names); everything degrades to single-process behaviour without an initialised group.
is_dist_avail_and_initialized = is_dist


def get_local_size() -> int:
    if not is_dist():
        return 1
    return int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1")))


def get_local_rank() -> int:
    if not is_dist():
        return 0
    return int(os.environ.get("LOCAL_RANK", "0"))


def save_on_master(*args, **kwargs):
    if is_main_process():
        torch.save(*args, **kwargs)


def all_gather(data):
    """Gather any picklable object from every rank (a one-element list when not distributed)."""
    return all_gather_object(data)


def _comm_device() -> torch.device:
    """Where a tensor must live to be all-reduced: the current GPU under NCCL, else the CPU."""
    if is_dist() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_dict(input_dict, average: bool = True):
    """Mean (or sum) over processes of a dict of scalar tensors, for logging; the values come
    back detached. Keys are sorted so that every rank reduces them in the same order."""
    if not is_dist() or not input_dict:
        return {k: v.detach() for k, v in input_dict.items()}
    with torch.no_grad():
        names = sorted(input_dict.keys())
        values = torch.stack([input_dict[k].detach().float().reshape(()) for k in names])
        values = all_reduce_mean(values) if average else all_reduce_sum(values)
    return dict(zip(names, values))


# ----------------------------------------------------------------------------- logging
class SmoothedValue:
    """Windowed median/average plus the global average of a scalar series (0 while empty)."""

    def __init__(self, window_size: int = 20, fmt: Optional[str] = None):
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self.fmt = fmt or "{median:.4f} ({global_avg:.4f})"

    def update(self, value, n: int = 1):
        self.deque.append(value)
        self.count += n
        self.total += value * n

    def synchronize_between_processes(self):
        """Sum count/total over ranks (the window stays local)."""
        if not is_dist():
            return
        t = all_reduce_sum(torch.tensor([self.count, self.total], dtype=torch.float64, device=_comm_device()))
        self.count = int(t[0].item())
        self.total = t[1].item()

    @property
    def median(self):
        return torch.tensor(list(self.deque)).median().item() if self.deque else 0.0

    @property
    def avg(self):
        return sum(self.deque) / len(self.deque) if self.deque else 0.0

    @property
    def global_avg(self):
        return self.total / max(self.count, 1)

    @property
    def max(self):
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self):
        return self.deque[-1] if self.deque else 0.0

    def __str__(self):
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg,
                               max=self.max, value=self.value)


class MetricLogger:
    """Named :class:`SmoothedValue` meters with a progress printer (``log_every``)."""

    def __init__(self, delimiter: str = "\t"):
        self.meters = defaultdict(SmoothedValue)
        self.delimiter = delimiter

    def update(self, **kwargs):
        """Tensors are read with ``.item()``; every value is stored as a Python float."""
        for k, v in kwargs.items():
            if isinstance(v, torch.Tensor):
                v = v.item()
            if not isinstance(v, numbers.Real):
                raise TypeError(f"meter {k!r} needs a number, got {type(v).__name__}")
            self.meters[k].update(float(v))

    def __getattr__(self, attr):
        meters = self.__dict__.get("meters", {})
        if attr in meters:
            return meters[attr]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{attr}'")

    def __str__(self):
        return self.delimiter.join(f"{name}: {meter}" for name, meter in self.meters.items())

    def synchronize_between_processes(self):
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def add_meter(self, name, meter):
        self.meters[name] = meter

    def log_every(self, iterable, print_freq, header=None):
        header = header or ""
        start = end = time.time()
        iter_time = SmoothedValue(fmt="{avg:.4f}")
        data_time = SmoothedValue(fmt="{avg:.4f}")
        total = len(iterable)
        width = len(str(total))
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if i % print_freq == 0 or i == total - 1:
                eta = str(datetime.timedelta(seconds=int(iter_time.global_avg * (total - i))))
                parts = [header, f"[{i:{width}d}/{total}]", f"eta: {eta}", str(self),
                         f"time: {iter_time}", f"data: {data_time}"]
                if torch.cuda.is_available():
                    parts.append(f"max mem: {torch.cuda.max_memory_allocated() / 1024.0 ** 2:.0f}")
                print(self.delimiter.join(parts), flush=True)
            end = time.time()
        elapsed = time.time() - start
        print(f"{header} Total time: {datetime.timedelta(seconds=int(elapsed))} "
              f"({elapsed / max(total, 1):.4f} s / it)", flush=True)


def get_sha() -> str:
    """Git commit / dirty state / branch of the source tree (``N/A`` outside a checkout)."""
    cwd = os.path.dirname(os.path.abspath(__file__))

    def _run(cmd):
        return subprocess.check_output(cmd, cwd=cwd, stderr=subprocess.DEVNULL).decode("ascii").strip()

    sha, diff, branch = "N/A", "clean", "N/A"
    try:
        sha = _run(["git", "rev-parse", "HEAD"])
        diff = "has uncommited changes" if _run(["git", "diff-index", "HEAD"]) else "clean"
        branch = _run(["git", "rev-parse", "--abbrev-ref", "HEAD"])
    except Exception:
        pass
    return f"sha: {sha}, status: {diff}, branch: {branch}"
