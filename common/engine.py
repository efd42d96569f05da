"""Classification train / eval loops shared by every image-classification script.

AMP via ``torch.amp`` (bf16 or fp16 + GradScaler), channels_last, grad clipping, DropPath schedules, exact
metric reduction across processes, and a clear stop on a non-finite loss.
"""
import math
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as D

__all__ = [
    "AverageMeter",
    "accuracy",
    "NonFiniteLossError",
    "AmpConfig",
    "amp_from_args",
    "add_engine_args",
    "prepare_model",
    "set_drop_path",
    "drop_path_rate_at",
    "train_one_epoch",
    "evaluate",
    "GlobalBatchNorm",
    "convert_sync_batchnorm",
]


class AverageMeter:
    """Running value / sum / count / average (pytorch-classification's meter)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = self.avg = self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent (list of 0-dim tensors), as the official ``utils.eval.accuracy``;
    zeros for an empty target."""
    batch = target.shape[0]
    if batch == 0:
        return [torch.zeros([], device=output.device) for _ in topk]
    maxk = min(max(topk), output.shape[1])
    _, pred = output.topk(maxk, 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [correct[: min(k, maxk)].reshape(-1).float().sum(0) * (100.0 / batch) for k in topk]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised before anything is written for that step."""


class AmpConfig:
    """Which autocast dtype to use (None = fp32) and whether a GradScaler is needed."""

    def __init__(self, dtype=None, device_type="cpu"):
        self.dtype = dtype
        self.device_type = device_type

    @property
    def enabled(self):
        return self.dtype is not None

    def autocast(self):
        if not self.enabled:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self):
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)


_APEX_LEVELS = {"O0": None, "O1": "fp16", "O2": "fp16", "O3": "fp16"}


def add_engine_args(parser):
    """Speed flags shared by the classification scripts (all off by default = the official fp32 behaviour)."""
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="mixed precision with torch.amp (fp16 uses a GradScaler)")
    g.add_argument("--amp-opt-level", "--opt-level", dest="amp_opt_level", choices=sorted(_APEX_LEVELS),
                   default=None, help="apex-style level, mapped onto torch.amp: O0=fp32, O1/O2/O3=fp16")
    g.add_argument("--channels-last", action="store_true", help="use the channels_last memory format")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNorm statistics across processes (CPU and GPU)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--print-freq", type=int, default=20, help="batches between progress lines")
    return parser


def amp_from_args(args, device):
    name = args.amp
    if getattr(args, "amp_opt_level", None):
        name = _APEX_LEVELS[args.amp_opt_level] or "none"
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return AmpConfig(dtype, device.type)


class GlobalBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are reduced over all processes (works with gloo on CPU).

    Same parameters and buffers as ``nn.BatchNorm2d`` (state_dicts are interchangeable). Single-process it is
    exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x):
        if not (self.training and D.is_dist()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable (grads are summed too)

        dims = (0, 2, 3)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float64, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims)]).to(torch.float64)
        stats = all_reduce(stats)
        total = D.all_reduce_sum(count)
        mean, sq = stats.chunk(2)
        mean = mean / total
        var = (sq / total - mean * mean).clamp_min(0)
        with torch.no_grad():
            if self.track_running_stats:
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (total / (total - 1).clamp_min(1))
                self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = (1, -1, 1, 1)
        inv = torch.rsqrt(var + self.eps).to(x.dtype)
        out = (x - mean.to(x.dtype).view(shape)) * inv.view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(model):
    """Swap every BatchNorm2d for a synchronised one: torch's SyncBatchNorm on CUDA, ours elsewhere."""
    on_cuda = any(p.is_cuda for p in model.parameters())
    if on_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            ref = next(iter(child.state_dict().values()))
            new = new.to(device=ref.device, dtype=child.running_mean.dtype if child.running_mean is not None
                          else ref.dtype)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(model, name, new)
        else:
            convert_sync_batchnorm(child)
    return model


def prepare_model(model, args, env):
    """Move to device, optional sync-BN / channels_last / DDP / compile. Returns (model, model_without_ddp)."""
    model = model.to(env.device)
    if getattr(args, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    if env.distributed and getattr(args, "sync_bn", False):
        model = convert_sync_batchnorm(model)
    bare = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if getattr(args, "compile", False):
        model = torch.compile(model)
    return model, bare


def set_drop_path(model, rate):
    """Set ``drop_prob`` of every DropPath-like module (timm's DropPath) to ``rate``."""
    for m in model.modules():
        if hasattr(m, "drop_prob") and not isinstance(m, nn.Dropout):
            m.drop_prob = rate


def drop_path_rate_at(base_rate, epoch, epochs, schedule="constant"):
    if schedule == "linear":
        return base_rate * epoch / max(1, epochs - 1)
    return base_rate


def _progress(iterable, total, desc, enabled):
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return iterable


def _fmt(i, n, data_t, batch_t, loss, top1, top5):
    return (f"({i}/{n}) Data: {data_t:.3f}s | Batch: {batch_t:.3f}s | Loss: {loss:.4f} | "
            f"top1: {top1: .4f} | top5: {top5: .4f}")


def _to_device(images, target, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=True)


def train_one_epoch(model, loader, criterion, optimizer, env, amp, scaler=None, epoch=0, clip_grad=None,
                    channels_last=False, print_freq=20, log=print, topk=(1, 5)):
    """One epoch. The loss of each rank is weighted by its share of the global batch so the DDP gradient is the
    gradient of the global-batch mean even when the last batch splits unevenly. Returns dict(loss, top1, top5)
    averaged over every training image of the epoch (all processes)."""
    model.train()
    sums = torch.zeros(4, dtype=torch.float64)  # loss*n, correct1, correct5, n
    n_steps = len(loader)
    batch_time, data_time = AverageMeter(), AverageMeter()
    end = time.perf_counter()
    for step, (images, target) in enumerate(_progress(loader, n_steps, f"epoch {epoch}", env.is_main)):
        data_time.update(time.perf_counter() - end)
        images, target = _to_device(images, target, env.device, channels_last)
        n_local = target.shape[0]
        n_global = n_local
        if env.distributed:
            n_global = int(D.all_reduce_sum(torch.tensor([n_local], device=env.device)).item())
        with amp.autocast():
            output = model(images)
            loss = criterion(output, target)
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step}/{n_steps}; stopping before the "
                f"optimizer step. The last checkpoint written is intact; lower the learning rate or disable AMP."
            )
        scaled = loss * (n_local * env.world_size / n_global)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(scaled).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            scaled.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        with torch.no_grad():
            top1, top5 = accuracy(output.float(), target, topk)
            sums += torch.tensor([loss.item() * n_local, top1.item() * n_local / 100,
                                  top5.item() * n_local / 100, n_local], dtype=torch.float64)
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if env.is_main and print_freq and ((step + 1) % print_freq == 0 or step + 1 == n_steps):
            log(_fmt(step + 1, n_steps, data_time.avg, batch_time.avg, sums[0] / sums[3],
                     100 * sums[1] / sums[3], 100 * sums[2] / sums[3]))
    return _reduce(sums, env)


def _reduce(sums, env):
    if env.distributed:
        sums = D.all_reduce_sum(sums.to(env.device)).cpu()
    n = max(sums[3].item(), 1)
    return {"loss": sums[0].item() / n, "top1": 100 * sums[1].item() / n, "top5": 100 * sums[2].item() / n,
            "count": int(sums[3].item())}


@torch.no_grad()
def evaluate(model, loader, criterion, env, amp, channels_last=False, topk=(1, 5)):
    """Loss and top-1/top-5 over the whole (sharded) loader, summed exactly over processes."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64)
    for images, target in _progress(loader, len(loader), "eval", env.is_main):
        images, target = _to_device(images, target, env.device, channels_last)
        with amp.autocast():
            output = model(images)
            loss = criterion(output, target)
        top1, top5 = accuracy(output.float(), target, topk)
        n = target.shape[0]
        sums += torch.tensor([loss.item() * n, top1.item() * n / 100, top5.item() * n / 100, n],
                             dtype=torch.float64)
    return _reduce(sums, env)
