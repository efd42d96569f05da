"""One training step for every script: autocast, GradScaler, unscale + clip, gradient accumulation, the
non-finite decision, and per-update hooks (EMA, per-iteration scheduler).

The loop stays in the script (as in torchvision's references); the step core owns what happens between the
loss and the next batch::

    step = TrainStep(model, optimizer, amp=AmpConfig(torch.bfloat16, "cuda"), scaler=scaler, clip_grad=5.0,
                     accum_steps=2, ema=model_ema, scheduler=lr_scheduler)
    for i, (images, target) in enumerate(loader):
        with step.forward(i, len(loader), epoch):       # autocast; DDP no_sync inside an accumulation window
            loss = criterion(model(images), target)
        result = step.backward(loss)                     # StepResult(updated, grad_norm)

Gradient accumulation: micro-batches ``i`` are grouped in windows of ``accum_steps`` consecutive indices (the
last window of an epoch may be shorter); each loss is divided by its window's size, DDP synchronises gradients
only on the window's last micro-batch, and the optimizer steps there. For a mean loss and equal micro-batches
this is the gradient of the whole window's batch.

The non-finite decision is made on a value that is identical on every process, so all processes stop together
with the same message, before the optimizer step (parameters, optimizer and scaler state, and the checkpoints
already written are untouched):

- by default the step core all-reduces a small vector (the local loss and a per-process flag) once per
  optimizer step and names the processes whose loss was non-finite;
- ``backward(loss, reduced=...)`` takes a value the caller already reduced over processes (a tensor, or a
  Python number it has read anyway for logging), and adds no collective.

Host syncs: this is the only one the step core makes, once per optimizer step. On CUDA the flag is copied to
the host asynchronously before the backward is queued and read after it, so the GPU keeps working while the
host waits. Nothing else reads a device value (the grad norm is returned as a tensor).
"""
import inspect
import math
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from .. import distributed as D

__all__ = ["NonFiniteLossError", "AmpConfig", "StepResult", "TrainStep", "unwrap_model"]


class NonFiniteLossError(RuntimeError):
    """A NaN/inf loss. Raised on every process together, with the same message, before the optimizer step:
    the parameters and the last checkpoint written are intact."""


class AmpConfig:
    """Which autocast dtype to use (None = fp32) and whether a GradScaler is needed (fp16 only)."""

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


def unwrap_model(model):
    """The bare module behind DistributedDataParallel / DataParallel / torch.compile (or the model itself)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class StepResult(NamedTuple):
    updated: bool                        # the optimizer stepped (last micro-batch of an accumulation window)
    grad_norm: Optional[torch.Tensor]    # total norm before clipping (0-dim tensor), when clipping/asked for


def _acc_dtype(device):
    return torch.float32 if device.type == "mps" else torch.float64


class _Pending:
    """A small device vector on its way to the host (asynchronous on CUDA)."""

    def __init__(self, vec):
        self.event = None
        if vec.is_cuda:
            self.host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            self.host.copy_(vec, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = vec

    def read(self):
        if self.event is not None:
            self.event.synchronize()
        return self.host.tolist()


class TrainStep:
    """The step core. Hooks run after every optimizer step, in this order: ``ema.update(bare_model, step=n)``
    (timm's ModelEmaV3; ``update(model)`` for EMA classes without ``step``), the per-iteration ``scheduler``
    (timm's ``step_update(num_updates=n)``, else torch's ``step()``), then each ``hooks`` callable as
    ``hook(n)``, where ``n`` = :attr:`num_updates` (optimizer steps taken; set it when resuming).

    ``clip_grad``: max grad norm (None/0 = no clipping); ``grad_norm=True`` returns the norm without clipping.
    ``scaler``: a ``torch.amp.GradScaler`` (ignored when disabled); gradients are unscaled before the norm.
    """

    def __init__(self, model, optimizer, *, amp=None, scaler=None, clip_grad=None, accum_steps=1,
                 grad_norm=False, ema=None, scheduler=None, hooks=(), num_updates=0):
        if int(accum_steps) < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        self.model = model
        self.optimizer = optimizer
        self.amp = amp if amp is not None else AmpConfig()
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.clip_grad = float(clip_grad) if clip_grad else None
        self.accum_steps = int(accum_steps)
        self.want_grad_norm = bool(grad_norm)
        self.ema = ema
        self.scheduler = scheduler
        self.hooks = tuple(hooks)
        self.num_updates = int(num_updates)
        self._ema_takes_step = ema is not None and "step" in inspect.signature(ema.update).parameters
        self._clean = False          # gradients are known to be None (zeroed after the last update)
        self._set_position(0, None, None)
        self._reset_window()

    # ------------------------------------------------------------ position in the epoch
    def _set_position(self, step, n_steps, epoch):
        n = self.accum_steps
        first = step - step % n
        size = n if n_steps is None else max(1, min(n, n_steps - first))
        self._pos = (step, n_steps, epoch, first, size, step - first == size - 1)

    def _reset_window(self):
        self._local = self._shared = None
        self._host = 0.0

    def _sync_context(self, final):
        no_sync = getattr(self.model, "no_sync", None)
        return nullcontext() if final or no_sync is None else no_sync()

    @contextmanager
    def forward(self, step=0, n_steps=None, epoch=None):
        """Context for the forward of micro-batch ``step`` (0-based, within the epoch) of ``n_steps``: autocast,
        and DDP's ``no_sync`` unless it ends an accumulation window. ``epoch`` only names the step in messages.
        ``n_steps`` is required with ``accum_steps > 1`` (it sizes the last window)."""
        if self.accum_steps > 1 and n_steps is None:
            raise ValueError("TrainStep.forward needs n_steps (the number of batches) when accum_steps > 1")
        self._set_position(step, n_steps, epoch)
        with self._sync_context(self._pos[5]), self.amp.autocast():
            yield self

    # ------------------------------------------------------------ the non-finite decision
    def _note(self, loss, reduced):
        if reduced is None:
            v = loss.detach().to(_acc_dtype(loss.device)).sum().reshape(1)
            self._local = v if self._local is None else self._local + v
        elif torch.is_tensor(reduced):
            v = reduced.detach().to(_acc_dtype(reduced.device)).sum().reshape(1)
            self._shared = v if self._shared is None else self._shared + v
        else:
            self._host += float(reduced)

    def _pending(self):
        parts, per_rank = [], False
        if self._local is not None:
            vec = self._local
            if D.is_dist():
                flags = torch.zeros(D.get_world_size(), dtype=vec.dtype, device=vec.device)
                flags[D.get_rank()] = 1.0
                flags = flags * (~torch.isfinite(vec)).to(vec.dtype)
                vec = D.all_reduce_sum(torch.cat([vec, flags]))
                per_rank = True
            parts.append(vec)
        if self._shared is not None:
            parts.append(self._shared.to(parts[0].device) if parts else self._shared)
        return (_Pending(torch.cat(parts)) if parts else None), per_rank

    def _decide(self, pending, per_rank, detail):
        values = pending.read() if pending is not None else []
        total = self._host
        ranks = []
        if per_rank:
            total += values[0]
            ranks = [r for r, bad in enumerate(values[1:1 + D.get_world_size()]) if bad]
            values = values[1 + D.get_world_size():]
        elif self._local is not None:
            total += values.pop(0)
        total += sum(values)
        if math.isfinite(total):
            return
        step, n_steps, epoch, first, size, _ = self._pos
        where = (f"epoch {epoch}, " if epoch is not None else "") + f"step {step}" + (
            f"/{n_steps}" if n_steps is not None else "")
        if size > 1:
            where += f" (micro-batches {first}-{step} of one optimizer step)"
        who = f" on process(es) {', '.join(map(str, ranks))}" if ranks else ""
        msg = (f"non-finite loss ({total}) at {where}{who}; every process stops before the optimizer step, so "
               f"the parameters and the last checkpoint written are intact. Lower the learning rate or disable "
               f"AMP.")
        if detail is not None:
            msg += " " + (detail() if callable(detail) else str(detail))
        raise NonFiniteLossError(msg)

    # ------------------------------------------------------------ backward + update
    def backward(self, loss, *, reduced=None, detail=None):
        """Backward of one micro-batch's loss and, on the last micro-batch of a window, the optimizer step.

        ``reduced``: a value identical on every process whose finiteness decides (a tensor or a number);
        default: the step core reduces the local loss itself. ``detail``: text (or a callable giving it)
        appended to the :class:`NonFiniteLossError` message. Returns :class:`StepResult`."""
        step, _, _, first, size, final = self._pos
        if step == first:
            self._reset_window()
            if not self._clean:
                self.optimizer.zero_grad(set_to_none=True)
        self._note(loss, reduced)
        pending, per_rank = self._pending() if final else (None, False)
        scaled = loss / size if size > 1 else loss
        if self.scaler is not None:
            scaled = self.scaler.scale(scaled)
        self._clean = False
        with self._sync_context(final):
            scaled.backward()
        if not final:
            return StepResult(False, None)
        try:
            self._decide(pending, per_rank, detail)
        finally:
            self._reset_window()
        return StepResult(True, self._update())

    def _update(self):
        norm = None
        if self.clip_grad is not None or self.want_grad_norm:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for p in self.model.parameters() if p.grad is not None]
            norm = nn.utils.clip_grad_norm_(params, self.clip_grad if self.clip_grad is not None else math.inf)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._clean = True
        self.num_updates += 1
        if self.ema is not None:
            bare = unwrap_model(self.model)
            if self._ema_takes_step:
                self.ema.update(bare, step=self.num_updates)
            else:
                self.ema.update(bare)
        if self.scheduler is not None:
            if hasattr(self.scheduler, "step_update"):
                self.scheduler.step_update(num_updates=self.num_updates)
            else:
                self.scheduler.step()
        for hook in self.hooks:
            hook(self.num_updates)
        return norm
