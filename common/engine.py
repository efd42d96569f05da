"""Classification train / eval loops shared by every image-classification script.

The step itself (AMP via ``torch.amp``, GradScaler, clipping, accumulation, the non-finite decision, EMA and
per-iteration scheduler hooks) is :mod:`common.train.step`; this module adds channels_last, DDP wrapping, sync-BN,
DropPath schedules, top-k accuracy (hard or soft targets) and exact metric reduction across processes.
"""
import argparse
import sys
import time

import torch
import torch.nn as nn

from . import distributed as D
from .train.step import AmpConfig, NonFiniteLossError, StepResult, TrainStep, unwrap_model

__all__ = [
    "AverageMeter",
    "accuracy",
    "NonFiniteLossError",
    "AmpConfig",
    "TrainStep",
    "StepResult",
    "unwrap_model",
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


def _correct(output, target, topk):
    """Number of rows whose target is among the ``k`` highest scores, for each ``k`` (float64 counts).

    ``target``: class indices, or 2-D class probabilities (mixup / cutmix / label smoothing) of the same shape as
    ``output``, read as their argmax class (as timm's training scripts do). ``k`` above the number of classes is
    clamped to it (every row counts)."""
    if target.ndim == 2 and target.shape == output.shape and target.is_floating_point():
        target = target.argmax(1)
    target = target.reshape(-1)
    maxk = max(1, min(max(topk), output.shape[1]))
    _, pred = output.topk(maxk, 1, True, True)
    hits = pred.eq(target.reshape(-1, 1)).to(_count_dtype(output.device))  # [batch, maxk], one 1 at most per row
    cum = hits.cumsum(1).sum(0)  # cum[j] = rows with the target among the top j+1
    return torch.stack([cum[min(k, maxk) - 1] if k > 0 else cum.new_zeros(()) for k in topk])


def _count_dtype(device):
    return torch.float32 if device.type == "mps" else torch.float64


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent (list of 0-dim tensors), as the official ``utils.eval.accuracy``; zeros for
    an empty target. Soft (2-D probability) targets count their argmax class; ``k`` larger than the number of
    classes is clamped."""
    batch = target.shape[0]
    if batch == 0:
        return [torch.zeros([], device=output.device) for _ in topk]
    return [c * (100.0 / batch) for c in _correct(output, target, topk).float()]


_APEX_LEVELS = {"O0": None, "O1": "fp16", "O2": "fp16", "O3": "fp16"}


def add_engine_args(parser):
    """Speed flags shared by the classification scripts (all off by default = the official fp32 behaviour)."""
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="mixed precision with torch.amp (fp16 uses a GradScaler)")
    g.add_argument("--amp-opt-level", "--opt-level", dest="amp_opt_level", choices=sorted(_APEX_LEVELS),
                   default=None, help="apex-style level, mapped onto torch.amp: O0=fp32, O1/O2/O3=fp16")
    g.add_argument("--channels-last", action="store_true", help="use the channels_last memory format")
    add_compile_args(g)
    g.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value")
    g.add_argument("--sync-bn", action="store_true",
                   help="synchronise BatchNorm statistics across processes (CPU and GPU)")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--print-freq", type=int, default=20, help="batches between progress lines")
    return parser


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def add_compile_args(parser, underscore=False):
    """``--compile``, ``--compile-mode`` and ``--compile-backend`` (``--compile_mode`` etc. too with ``underscore``, for the scripts whose
    official flags use underscores); read by :func:`compile_model` / :func:`prepare_model`."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (every model is compile-clean: one graph, no breaks)")
    names = ("--compile-mode", "--compile_mode") if underscore else ("--compile-mode",)
    parser.add_argument(*names, dest="compile_mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile mode (default: 'default'; 'reduce-overhead' = CUDA graphs, for the "
                             "launch-bound CIFAR models on a GPU)")
    names = ("--compile-backend", "--compile_backend") if underscore else ("--compile-backend",)
    parser.add_argument(*names, dest="compile_backend", default="inductor",
                        help="torch.compile backend (default inductor; 'aot_eager' / 'eager' trace without code "
                             "generation: quick checks for graph breaks)")
    return parser


def compile_model(model, args=None):
    """``torch.compile(model, mode=args.compile_mode, backend=args.compile_backend)`` when ``args.compile`` is set,
    else ``model``."""
    if not getattr(args, "compile", False):
        return model
    backend = getattr(args, "compile_backend", None) or "inductor"
    mode = getattr(args, "compile_mode", None)
    if backend != "inductor" and mode not in (None, "default"):
        raise ValueError(f"--compile-mode {mode} needs the inductor backend, not {backend!r}")
    return torch.compile(model, mode=mode, backend=backend)


def compile_args(args):
    """Only the compile flags of ``args`` (for scripts whose other flags must not reach :func:`prepare_model`)."""
    return argparse.Namespace(**{k: getattr(args, k, None) for k in ("compile", "compile_mode", "compile_backend")})


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


def prepare_model(model, args=None, env=None, *, find_unused_parameters=False, **ddp_kwargs):
    """Move to ``env.device``, then the optional sync-BN / channels_last / DDP / torch.compile (flags read from
    ``args``: ``sync_bn``, ``channels_last``, ``compile`` / ``compile_mode``; absent = off). ``find_unused_parameters`` and any other
    keyword go to DistributedDataParallel. Returns (model, model_without_ddp)."""
    env = env if env is not None else D.DistEnv()
    model = model.to(env.device)
    if getattr(args, "channels_last", False):
        model = model.to(memory_format=torch.channels_last)
    if env.distributed and getattr(args, "sync_bn", False):
        model = convert_sync_batchnorm(model)
    bare = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                    find_unused_parameters=find_unused_parameters, **ddp_kwargs)
    return compile_model(model, args), bare


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


def _fmt(i, n, data_t, batch_t, loss, accs):
    tops = " | ".join(f"{name}: {v: .4f}" for name, v in accs)
    return f"({i}/{n}) Data: {data_t:.3f}s | Batch: {batch_t:.3f}s | Loss: {loss:.4f} | {tops}"


def _to_device(images, target, device, channels_last):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, target.to(device, non_blocking=True)


def _sum_row(loss, output, target, topk, dtype):
    """[loss * n, correct@k ..., n] of one batch, on the device (no host sync)."""
    n = target.shape[0]
    loss_n = loss.detach().to(dtype).reshape(()) * n
    correct = _correct(output.detach().float(), target, topk).to(dtype)
    return torch.cat([loss_n.reshape(1), correct, torch.full((1,), float(n), dtype=dtype, device=loss.device)])


def train_one_epoch(model, loader, criterion, optimizer, env, amp, scaler=None, epoch=0, clip_grad=None,
                    channels_last=False, print_freq=20, log=print, topk=(1, 5), *, step=None, accum_steps=1,
                    batch_transform=None, progress=None):
    """One epoch through the step core (:class:`common.train.step.TrainStep`).

    The loss of each rank is weighted by its share of the global batch so the DDP gradient is the gradient of the
    global-batch mean even when the last batch splits unevenly; the non-finite decision is made on that
    all-reduced loss (one collective per batch carries both), so every process stops together. Metrics stay on
    the device and are read only every ``print_freq`` batches. ``step``: a TrainStep built by the script (EMA,
    per-iteration scheduler, accumulation; it then owns amp / scaler / clip_grad), else one is built from
    ``amp``, ``scaler``, ``clip_grad``, ``accum_steps``. ``batch_transform(images, target)`` runs on the device
    batch (e.g. timm's Mixup). ``progress(i, n, meters)``: the progress line of the pytorch/examples scripts,
    logged at the batches ``i % print_freq == 0`` (0-based, as officially) instead of the default line;
    ``meters`` maps ``batch_time``, ``data_time``, ``loss``, ``top1``, ``top5`` to :class:`AverageMeter` s (``val``:
    this batch, ``avg``: the epoch so far, of this process). Returns dict(loss, top1, top5, count) over every
    training image of the epoch (all processes); ``top{k}`` for each k of ``topk``."""
    if step is None:
        step = TrainStep(model, optimizer, amp=amp, scaler=scaler, clip_grad=clip_grad, accum_steps=accum_steps)
    model.train()
    dtype = _count_dtype(env.device)
    sums = torch.zeros(2 + len(topk), dtype=dtype, device=env.device)  # loss*n, correct@k..., n
    n_steps = len(loader)
    batch_time, data_time = AverageMeter(), AverageMeter()
    end = time.perf_counter()
    for i, (images, target) in enumerate(_progress(loader, n_steps, f"epoch {epoch}", env.is_main)):
        data_time.update(time.perf_counter() - end)
        images, target = _to_device(images, target, env.device, channels_last)
        if batch_transform is not None:
            images, target = batch_transform(images, target)
        with step.forward(i, n_steps, epoch):
            output = model(images)
            loss = criterion(output, target)
        row = _sum_row(loss, output, target, topk, dtype)
        if env.distributed:
            glob = D.all_reduce_sum(torch.stack([row[0], row[-1]]))  # global loss*n and n
            weight = (target.shape[0] * env.world_size) / glob[1]
            step.backward(loss * weight.to(loss.dtype), reduced=glob[0])
        else:
            step.backward(loss, reduced=row[0])
        sums += row
        batch_time.update(time.perf_counter() - end)
        end = time.perf_counter()
        if progress is not None:
            if env.is_main and print_freq and i % print_freq == 0:
                log(progress(i, n_steps, _meters(row.tolist(), sums.tolist(), batch_time, data_time, topk)))
        elif env.is_main and print_freq and ((i + 1) % print_freq == 0 or i + 1 == n_steps):
            s = sums.tolist()
            log(_fmt(i + 1, n_steps, data_time.avg, batch_time.avg, s[0] / s[-1],
                     [(f"top{k}", 100 * c / s[-1]) for k, c in zip(topk, s[1:-1])]))
    return _reduce(sums, env, topk)


def _meters(row, sums, batch_time, data_time, topk):
    """AverageMeters of the current batch (``row``) and the epoch so far (``sums``), as the official scripts
    print them."""
    out = {"batch_time": batch_time, "data_time": data_time}
    for j, name in enumerate(["loss"] + [f"top{k}" for k in topk]):
        scale = 1.0 if j == 0 else 100.0
        m = AverageMeter()
        m.val = scale * row[j] / max(row[-1], 1)
        m.sum, m.count = scale * sums[j], int(sums[-1])
        m.avg = m.sum / max(m.count, 1)
        out[name] = m
    return out


def _reduce(sums, env, topk):
    if env.distributed:
        sums = D.all_reduce_sum(sums.to(env.device))
    s = sums.tolist()
    n = max(s[-1], 1)
    out = {"loss": s[0] / n}
    out.update({f"top{k}": 100 * c / n for k, c in zip(topk, s[1:-1])})
    out["count"] = int(s[-1])
    return out


@torch.no_grad()
def evaluate(model, loader, criterion, env, amp, channels_last=False, topk=(1, 5), *, progress=None, print_freq=0,
             log=print):
    """Loss and top-k accuracies over the whole (sharded) loader, summed exactly over processes (read from the
    device once, at the end). ``progress(i, n, meters)`` (as in :func:`train_one_epoch`, without ``data_time``)
    is logged by the main process at the batches ``i % print_freq == 0`` (a device read at each of them)."""
    model.eval()
    dtype = _count_dtype(env.device)
    sums = torch.zeros(2 + len(topk), dtype=dtype, device=env.device)
    n_steps, batch_time = len(loader), AverageMeter()
    end = time.perf_counter()
    for i, (images, target) in enumerate(_progress(loader, n_steps, "eval", env.is_main)):
        images, target = _to_device(images, target, env.device, channels_last)
        with amp.autocast():
            output = model(images)
            loss = criterion(output, target)
        row = _sum_row(loss, output, target, topk, dtype)
        sums += row
        batch_time.update(time.perf_counter() - end)
        if progress is not None and env.is_main and print_freq and i % print_freq == 0:
            log(progress(i, n_steps, _meters(row.tolist(), sums.tolist(), batch_time, None, topk)))
        end = time.perf_counter()
    return _reduce(sums, env, topk)
