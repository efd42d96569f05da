"""The ImageNet recipe pieces that the classification scripts switch on: a thin, documented layer over timm.

Every builder takes plain values (the scripts keep the papers' own flag / config names and pass the values
in), and returns the timm or torch object itself, so the rest of timm's API applies unchanged.

===========================  ============================================================================
piece                        builder
===========================  ============================================================================
train / eval transforms      :func:`timm_transform` (``timm.data.create_transform``: RandAugment, random
                             erasing, color jitter, interpolation, crop_pct); the plain torchvision
                             transforms of the pytorch/examples scripts are
                             :func:`common.data.imagenet_transforms`
mixup / cutmix               :func:`build_mixup` (``timm.data.Mixup``; ``None`` when switched off)
loss                         :func:`build_criterion` (``SoftTargetCrossEntropy`` under mixup, else
                             ``nn.CrossEntropyLoss(label_smoothing=...)``)
optimizer                    :func:`build_optimizer` over :func:`param_groups` (``timm.optim.create_optimizer_v2``)
LR schedule                  :func:`build_scheduler` (``timm.scheduler.create_scheduler_v2``, per epoch or per
                             iteration, with warm-up); :func:`examples_lr` + :func:`set_lr` for the
                             pytorch/examples per-epoch rule
EMA                          :func:`build_ema` (``timm.utils.ModelEmaV3``)
===========================  ============================================================================

Recipes of the papers, in these terms:

* pytorch/examples ImageNet (DLA ``train.py``, RLA-Net ``train.py``): ``common.data.imagenet_transforms``,
  ``nn.CrossEntropyLoss()``, ``build_optimizer(model, 'momentum', lr, wd, filter_bias_and_bn=False,
  no_weight_decay=())`` (torch SGD, no Nesterov, decay on every parameter),
  ``set_lr(opt, examples_lr(epoch, lr, warmup_epochs=..., warmup_lr=...))`` at the start of each epoch.
  DLA's ``--wd-la``: ``overrides=[('*layer_atten*', {'weight_decay': wd_la})]``.
  RLA-Net ``train_light.py``: ``examples_lr(epoch, 0.045, decay_epochs=1, decay_rate=0.98)``.
* Swin-style (DWNet ``main.py``): ``timm_transform(True, 224)`` (the defaults are that recipe),
  ``build_mixup(num_classes, 0.8, 1.0, smoothing=0.1)``, ``build_criterion(True, 0.1)``,
  ``build_optimizer(model, 'adamw', lr, 0.05, eps=1e-8, betas=(0.9, 0.999))`` (no decay for 1-D parameters,
  ``.bias`` and the model's ``no_weight_decay()``), ``build_scheduler(opt, 'cosine', epochs, updates_per_epoch=n,
  warmup_epochs=20, warmup_lr=..., min_lr=...)`` stepped with ``step_update(epoch * n + idx)`` after each update.

Note that timm's optimizer name ``'sgd'`` is SGD with *Nesterov* momentum; ``'momentum'`` is torch's plain
``SGD(momentum=...)`` that the pytorch/examples scripts use.
"""
import fnmatch

import torch.nn as nn

from ..data import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "timm_transform",
    "build_mixup",
    "build_criterion",
    "param_groups",
    "build_optimizer",
    "build_scheduler",
    "examples_lr",
    "set_lr",
    "build_ema",
]


# ---------------------------------------------------------------- transforms
def timm_transform(train, img_size=224, *, auto_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, re_prob=0.25,
                   re_mode="pixel", re_count=1, interpolation="bicubic", crop_pct=0.875, hflip=0.5, scale=None,
                   ratio=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``timm.data.create_transform`` with the Swin/DeiT recipe as defaults.

    Training: RandomResizedCrop(``img_size``, ``scale`` (default 0.08-1), ``ratio`` (default 3/4-4/3),
    ``interpolation``), horizontal flip, ``auto_augment`` (a timm policy string such as
    ``'rand-m9-mstd0.5-inc1'``; ``None`` for none; timm ignores ``color_jitter`` while a RandAugment /
    AutoAugment policy is set), ToTensor, Normalize(``mean``, ``std``), RandomErasing(``re_prob``, ``re_mode``,
    ``re_count``). Evaluation: Resize(floor(``img_size / crop_pct``), ``interpolation``) of the shorter side,
    CenterCrop(``img_size``), ToTensor, Normalize; crop_pct 0.875 gives Swin's Resize(256) -> CenterCrop(224).
    Wrap the dataset in :class:`common.data.SeededAugment` to make the random ops depend on (seed, epoch, index).
    """
    from timm.data import create_transform

    _posterize_keeps_zero_bits()
    if train:
        return create_transform(img_size, is_training=True, auto_augment=auto_augment, color_jitter=color_jitter,
                                re_prob=re_prob, re_mode=re_mode, re_count=re_count, interpolation=interpolation,
                                hflip=hflip, scale=scale, ratio=ratio, mean=mean, std=std)
    return create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct, mean=mean,
                            std=std)


def _posterize_keeps_zero_bits():
    """Pillow 13 refuses ``ImageOps.posterize(img, 0)``, which timm's RandAugment asks for at the top magnitude
    of the ``inc1`` policies (PosterizeIncreasing keeps 4 down to 0 bits), so ``rand-m9-mstd0.5-inc1`` fails
    after a few hundred images. Earlier Pillow returned the image with every value 0; timm's posterize ops are
    registered again with that result for 0 bits (idempotent; other bit counts go to timm's op unchanged)."""
    from timm.data import auto_augment as aa

    orig = aa.posterize
    if getattr(orig, "keeps_zero_bits", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep <= 0:
            return img.point([0] * 256 * len(img.getbands()))
        return orig(img, bits_to_keep, **kwargs)

    posterize.keeps_zero_bits = True
    for name, op in list(aa.NAME_TO_OP.items()):
        if op is orig:
            aa.NAME_TO_OP[name] = posterize
    aa.posterize = posterize


# ---------------------------------------------------------------- mixup / cutmix and the loss
def build_mixup(num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, *, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                mode="batch", smoothing=0.1):
    """``timm.data.Mixup`` (returns ``None`` when ``mixup_alpha == cutmix_alpha == 0`` and no ``cutmix_minmax``).

    ``mixup(x, y)`` mixes the batch in place with its reverse (``x.flip(0)``) and returns soft targets
    ``lam * onehot_s(y) + (1 - lam) * onehot_s(y.flip(0))`` where ``onehot_s`` puts ``1 - smoothing +
    smoothing / num_classes`` on the class and ``smoothing / num_classes`` elsewhere; pair it with
    ``build_criterion(True)``. ``lam`` is drawn from NumPy's global RNG; modes ``'batch'`` / ``'pair'`` need an
    even batch size (use ``drop_last=True``). Under DDP each rank mixes its own shard (as timm's and Swin's
    scripts do), so a mixup run is not the single-process run on the same global batch.
    """
    if not (mixup_alpha > 0 or cutmix_alpha > 0 or cutmix_minmax is not None):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, cutmix_minmax=cutmix_minmax, prob=prob,
                 switch_prob=switch_prob, mode=mode, label_smoothing=smoothing, num_classes=num_classes)


def build_criterion(mixup_active, smoothing=0.0):
    """Training loss: ``timm.loss.SoftTargetCrossEntropy`` (mean over the batch of ``-sum_k q_k log p_k``) when
    mixup/cutmix makes the targets soft (the smoothing is then already in the targets), else
    ``nn.CrossEntropyLoss(label_smoothing=smoothing)`` (the same loss as timm's ``LabelSmoothingCrossEntropy``
    and DLA's ``CrossEntropyLabelSmooth``: targets ``(1 - s) * onehot + s / K``). Evaluate with plain
    ``nn.CrossEntropyLoss()``."""
    if mixup_active:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()
    return nn.CrossEntropyLoss(label_smoothing=float(smoothing))


# ---------------------------------------------------------------- optimizer
def _matches(name, patterns):
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def param_groups(model, weight_decay, *, filter_bias_and_bn=True, no_weight_decay=None, overrides=()):
    """Parameter groups by name, each with ``param_names`` (torch keeps them in the optimizer state).

    * ``overrides``: ``[(pattern, {option: value, ...}), ...]``; a parameter whose name matches a pattern
      (``fnmatch``, e.g. ``'*layer_atten*'``, or the exact name) joins that group with those optimizer options
      (``weight_decay``, ``lr``, ...; the first matching pattern wins); the decay rules below do not apply to it.
    * the others: ``weight_decay`` 0 for 1-D parameters (norm weights, biases) and names ending ``.bias`` when
      ``filter_bias_and_bn``, and for the names in ``no_weight_decay`` (exact names or patterns; ``None``: the
      model's ``no_weight_decay()`` names, plus its Swin-style ``no_weight_decay_keywords()`` as substrings; pass
      ``()`` to decay them as the pytorch/examples scripts do); ``weight_decay`` for the rest.

    Parameters with ``requires_grad=False`` are left out. Order: decayed, not decayed, then the overrides; empty
    groups are dropped. Build it on the bare model (before DDP adds ``module.`` to the names).
    """
    if no_weight_decay is None:
        skip = set(getattr(model, "no_weight_decay", lambda: ())())
        skip |= {f"*{k}*" for k in getattr(model, "no_weight_decay_keywords", lambda: ())()}
    else:
        skip = set(no_weight_decay)
    overrides = [(pattern, dict(options)) for pattern, options in overrides]
    decay, no_decay = {"params": [], "param_names": [], "weight_decay": weight_decay}, \
        {"params": [], "param_names": [], "weight_decay": 0.0}
    extra = [dict(options, params=[], param_names=[]) for _, options in overrides]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = next((g for (pattern, _), g in zip(overrides, extra) if _matches(name, [pattern])), None)
        if group is None:
            one_d = filter_bias_and_bn and (param.ndim <= 1 or name.endswith(".bias"))
            group = no_decay if one_d or _matches(name, skip) else decay
        group["params"].append(param)
        group["param_names"].append(name)
    return [g for g in [decay, no_decay] + extra if g["params"]]


def build_optimizer(model, opt="momentum", lr=0.1, weight_decay=0.0, momentum=0.9, *, filter_bias_and_bn=True,
                    no_weight_decay=None, overrides=(), **kwargs):
    """``timm.optim.create_optimizer_v2(param_groups(model, ...), opt, lr, weight_decay, momentum, **kwargs)``.

    ``opt`` is a timm optimizer name: ``'momentum'`` = ``torch.optim.SGD(momentum, nesterov=False)`` (the
    pytorch/examples optimizer), ``'sgd'`` = SGD with Nesterov momentum, ``'adamw'`` = ``torch.optim.AdamW``
    (pass ``eps``, ``betas`` in ``kwargs``), and the rest of ``timm.optim.list_optimizers()``. See
    :func:`param_groups` for which parameters get weight decay.
    """
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, weight_decay, filter_bias_and_bn=filter_bias_and_bn,
                          no_weight_decay=no_weight_decay, overrides=overrides)
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs)


# ---------------------------------------------------------------- learning-rate schedules
def build_scheduler(optimizer, sched="cosine", epochs=300, *, updates_per_epoch=0, warmup_epochs=0,
                    warmup_lr=1e-6, min_lr=0.0, decay_epochs=30, decay_milestones=(30, 60, 90), decay_rate=0.1,
                    warmup_prefix=False):
    """A timm scheduler from ``timm.scheduler.create_scheduler_v2`` (``sched``: 'cosine', 'step', 'multistep',
    'poly', 'tanh', 'constant', ...), with a linear warm-up from ``warmup_lr`` over ``warmup_epochs``.

    * per epoch (``updates_per_epoch=0``): call ``scheduler.step(epoch)`` at the start of epoch ``epoch``;
      'step' gives ``lr * decay_rate ** (epoch // decay_epochs)`` (the pytorch/examples rule, warm-up aside),
      'cosine' gives ``min_lr + (lr - min_lr) * (1 + cos(pi * epoch / epochs)) / 2``.
    * per iteration (``updates_per_epoch=n``): every length is multiplied by ``n`` and
      ``scheduler.step_update(t)`` sets the LR of update ``t`` (Swin passes ``epoch * n + idx`` after each
      optimizer step); ``t`` then replaces ``epoch`` in the formulas above.

    During warm-up (``t < warmup_t``) the LR is ``warmup_lr + t * (lr - warmup_lr) / warmup_t``. Without
    ``warmup_prefix`` the warm-up overlaps the first ``warmup_epochs`` of the decay (Swin, timm default); with
    it the decay starts after the warm-up (``t - warmup_t``). Each parameter group keeps its own base LR.
    """
    from timm.scheduler import create_scheduler_v2

    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, decay_epochs=decay_epochs, decay_milestones=list(decay_milestones),
        decay_rate=decay_rate, min_lr=min_lr, warmup_lr=warmup_lr, warmup_epochs=warmup_epochs,
        warmup_prefix=warmup_prefix, step_on_epochs=updates_per_epoch <= 0, updates_per_epoch=updates_per_epoch)
    return scheduler


def examples_lr(epoch, lr, decay_epochs=30, decay_rate=0.1, warmup_epochs=0, warmup_lr=1e-4):
    """The per-epoch LR of the pytorch/examples ImageNet script: ``lr * decay_rate ** (epoch // decay_epochs)``,
    with DLA ``train.py``'s warm-up (its ``gen_lr``): epoch 0 at ``warmup_lr``, epochs ``1 .. warmup_epochs - 1``
    at ``lr * epoch / warmup_epochs`` (this is not timm's warm-up, which interpolates from ``warmup_lr``)."""
    if epoch < warmup_epochs:
        return warmup_lr if epoch == 0 else lr * epoch / warmup_epochs
    return lr * decay_rate ** (epoch // decay_epochs)


def set_lr(optimizer, lr):
    """Set every parameter group's LR (pytorch/examples ``adjust_learning_rate``)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---------------------------------------------------------------- EMA
def build_ema(model, decay=0.9998, *, warmup=False, device=None, exclude_buffers=False):
    """``timm.utils.ModelEmaV3`` of the bare model (before DDP wrapping; update with the bare model too).

    ``ema.update(model)`` sets every floating-point entry of the state_dict (parameters and, unless
    ``exclude_buffers``, buffers such as BN running stats) to ``decay * ema + (1 - decay) * model`` and copies
    integer buffers; ``ema.update(model, step)`` with ``warmup`` ramps the decay up as timm documents.
    ``ema.module`` is the averaged model (kept in eval mode) to evaluate and checkpoint. ``device='cpu'`` keeps
    it off the GPU.
    """
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=warmup, device=device, exclude_buffers=exclude_buffers)
