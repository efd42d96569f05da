"""Train / evaluate DWNet with the Swin-Transformer recipe: the official ``main.py``, its flags and outputs.

As the official README runs it (``torch.distributed.launch``), with torchrun, or as a plain single process::

    python -m torch.distributed.launch --nproc_per_node 8 --master_port 12345 dwnet/main.py \\
        --cfg dwnet/configs/dwnet_tiny_patch4_window7_224.yaml --data-path /path/to/imagenet --batch-size 128
    python -m torch.distributed.launch --nproc_per_node 1 --master_port 12345 dwnet/main.py \\
        --cfg dwnet/configs/dwnet_tiny_patch4_window7_224.yaml --resume dwnet_tiny_224.pth \\
        --data-path /path/to/imagenet --eval
    torchrun --nproc_per_node 2 dwnet/main.py --cfg ... --demo --amp-opt-level O0 --opts DATA.IMG_SIZE 32
    python dwnet/main.py --cfg ... --demo ...

GPUs use NCCL, CPUs gloo. The run folder is ``<--output>/<MODEL.NAME>/<--tag>``: ``ckpt_epoch_<e>.pth`` (keys
``model``, ``optimizer``, ``lr_scheduler``, ``max_accuracy``, ``epoch``, ``config``, plus ``scaler`` under fp16),
the ``last_checkpoint`` pointer, ``config.json`` (the resolved config as YAML text) and ``log_rank0.txt`` (the
official log lines). Flags beyond the official ones: ``--demo`` (the bundled digits ImageFolder, 10 classes),
``--trust-checkpoint``, ``--amp-dtype``, ``--device``.

Where this script differs from the official one, on purpose:

* ``--amp-opt-level`` is mapped onto ``torch.amp`` (no apex): O0 = fp32, O1 / O2 = autocast (float16 with a
  GradScaler on CUDA, bfloat16 on the CPU; ``--amp-dtype`` picks), O2's fp16 master weights are not copied.
* A non-finite loss stops every process with one message before the optimizer step (the official code skips
  the batch); with fp16 the GradScaler still skips steps whose gradients overflow. Gradients are clipped
  once per optimizer step, on the accumulated gradient (officially after every micro-batch).
* The per-iteration schedule counts optimizer steps (officially micro-batches, one behind): with
  accumulation the cosine has ``ceil(batches / steps)`` updates per epoch.
* The global generators are re-seeded at the start of every epoch from (SEED, rank, epoch), and the training
  augmentation of each image depends on (SEED, epoch, index) only, so a run resumed from the checkpoint of
  epoch ``e`` continues exactly as the uninterrupted run (officially seeded once with SEED + rank).
* The checkpoint of an epoch is written after its validation, so its ``max_accuracy`` includes that epoch
  (officially one epoch stale); it is loaded strictly (a checkpoint of another variant is refused with the
  list of mismatched keys; officially ``strict=False``) and safely (``weights_only``; the official releases
  hold a pickled yacs config, which the allow-list reads).
* Under DDP the BatchNorm running statistics are averaged over the processes after every epoch (timm's
  ``distribute_bn``), so every process validates the model that is saved (officially each process kept its
  own statistics, ``broadcast_buffers=False``, and the checkpoint held rank 0's).
* Validation accuracy is summed exactly over processes (officially averaged per batch); ``--eval`` needs a
  checkpoint (``--resume`` or auto-resume; officially it would start training); ``--data-set CIFAR`` reads the
  CIFAR-10 python pickles under ``--data-path`` (no download).
* ``--zip`` reads Swin's zipped ImageNet (``train.zip`` + ``train_map.txt``, ``val.zip`` + ``val_map.txt``
  under ``--data-path``; officially imported but never used to build the data set). ``--cache-mode`` as Swin:
  ``no`` reads from the zip, ``full`` holds every training image's bytes in memory, ``part`` only the share of
  this process, which then trains on that fixed share (reshuffled every epoch; officially the shares could
  differ by one image, here they are cut to equal length so every process runs the same number of steps);
  the validation set is always cached ``part`` (each process its own shard). Without ``--zip`` the cache
  mode has no effect, as officially.
"""
import argparse
import datetime
import glob
import math
import os
import sys
import time

if __package__ in (None, ""):  # run as a file (python dwnet/main.py, torch.distributed.launch, torchrun)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from common import checkpoint as ckpt  # noqa: E402
from common import data as cdata  # noqa: E402
from common import distributed as D  # noqa: E402
from common import engine  # noqa: E402
from common.config import ConfigError, add_config_args, dump_run_config  # noqa: E402
from common.logging import setup_logging  # noqa: E402
from common.train import recipe  # noqa: E402
from common.train.cli import cli as run_cli  # noqa: E402
from common.train.step import AmpConfig, NonFiniteLossError, TrainStep  # noqa: E402
from dwnet.config import AMP_LEVELS, DATA_SETS, get_config  # noqa: E402
from dwnet.models.build import MODEL_TYPES  # noqa: E402
from dwnet.models.build import build_model as _build_model  # noqa: E402

__all__ = ["get_parser", "parse_option", "build_model", "build_transform", "part_indices", "build_loader", "build_amp",
           "checkpointer", "auto_resume_helper", "main", "cli", "LOG_FORMAT", "MODEL_TYPES"]

# the official logger's line format and date format (logger.py of Swin-Transformer)
LOG_FORMAT = "[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"
DEMO_ROOT = "datasets"


# ---------------------------------------------------------------------------------------- flags and config
def get_parser():
    """The official flags and defaults (``--local_rank`` is optional here), plus ``--demo``,
    ``--trust-checkpoint``, ``--amp-dtype`` and ``--device``."""
    p = argparse.ArgumentParser("DWNet training and evaluation script", add_help=True)
    add_config_args(p)
    p.add_argument("--batch-size", type=int, default=128, help="batch size for a single GPU (process)")
    p.add_argument("--data-path", type=str, help="path to the dataset (ImageNet: train/ and val/ class folders)")
    p.add_argument("--zip", action="store_true",
                   help="use zipped dataset instead of folder dataset (<data-path>/{train,val}.zip + *_map.txt)")
    p.add_argument("--cache-mode", type=str, default="part", choices=list(cdata.CACHE_MODES),
                   help="no: no cache, full: cache all data, part: sharding the dataset into nonoverlapping "
                        "pieces and only cache one piece (with --zip)")
    p.add_argument("--resume", help="resume from checkpoint")
    ckpt.add_trust_arg(p)
    p.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    p.add_argument("--use-checkpoint", action="store_true",
                   help="whether to use gradient checkpointing to save memory")
    p.add_argument("--amp-opt-level", type=str, default="O1", choices=list(AMP_LEVELS),
                   help="mixed precision opt level (O0: fp32; O1 / O2: torch.amp autocast)")
    p.add_argument("--amp-dtype", choices=["float16", "bfloat16"], default=None,
                   help="autocast dtype for O1 / O2 (default: float16 on CUDA, bfloat16 on the CPU)")
    p.add_argument("--output", default="output", type=str, metavar="PATH",
                   help="root of output folder, the full path is <output>/<model_name>/<tag> (default: output)")
    p.add_argument("--tag", help="tag of experiment")
    p.add_argument("--eval", action="store_true", help="perform evaluation only")
    p.add_argument("--throughput", action="store_true", help="test throughput only")
    p.add_argument("--data-set", default="IMNET", choices=sorted(DATA_SETS), type=str, help="ImageNet dataset path")
    p.add_argument("--epoch", default=300, type=int, help="training epochs (overrides TRAIN.EPOCHS unless 300)")
    p.add_argument("--demo", action="store_true",
                   help=f"use the bundled digits ImageFolder (10 classes; built under --data-path, default "
                        f"{DEMO_ROOT}/); pass a small size for the CPU, e.g. --opts DATA.IMG_SIZE 32")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    engine.add_compile_args(p)
    D.add_dist_args(p)
    return p


def parse_option(argv=None):
    """``(args, config)`` as officially: flags parsed with ``parse_known_args`` (unknown flags are ignored and
    returned in ``args.unknown``), then :func:`dwnet.config.get_config`. ``--demo`` builds the digits set and
    points ``--data-path`` at it."""
    args, unknown = get_parser().parse_known_args(argv)
    args.unknown = unknown
    if args.demo:
        root = args.data_path or DEMO_ROOT
        build = cdata.build_demo_zip if args.zip else cdata.build_demo_imagefolder
        if D.get_rank() == 0:
            build(root)
        D.barrier()
        args.data_path = build(root)
        args.data_set = "IMNET"
    config = get_config(args)
    config.defrost()  # as officially, the data set decides the number of classes (1000 for ImageNet)
    config.MODEL.NUM_CLASSES = 10 if args.demo or config.DATA.DATASET == "cifar" else 1000
    config.freeze()
    return args, config


# ---------------------------------------------------------------------------------------- model
def build_model(config):
    """:func:`dwnet.models.build_model` (the official ``models/build.py``); a config the model refuses is a
    :class:`ConfigError` naming it."""
    try:
        return _build_model(config)
    except (ValueError, TypeError, AssertionError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"cannot build {config.MODEL.NAME} ({config.MODEL.TYPE}) from the config: {err}") from None


# ---------------------------------------------------------------------------------------- data
def build_transform(is_train, config):
    """Swin's ``build_transform``: timm's training transform (RandAugment, random erasing, bicubic
    RandomResizedCrop; a RandomCrop with padding 4 for images of 32 pixels or less), and for evaluation
    Resize(img_size * 256 / 224) + CenterCrop (``TEST.CROP``) or Resize to the square size; none for <= 32."""
    from torchvision import transforms

    size, aug = config.DATA.IMG_SIZE, config.AUG
    resize_im = size > 32
    if is_train:
        t = recipe.timm_transform(
            True, size, auto_augment=aug.AUTO_AUGMENT if aug.AUTO_AUGMENT != "none" else None,
            color_jitter=aug.COLOR_JITTER if aug.COLOR_JITTER > 0 else None, re_prob=aug.REPROB,
            re_mode=aug.REMODE, re_count=aug.RECOUNT, interpolation=config.DATA.INTERPOLATION)
        if not resize_im:
            t.transforms[0] = transforms.RandomCrop(size, padding=4)
        return t
    normalize = [transforms.ToTensor(), transforms.Normalize(cdata.IMAGENET_MEAN, cdata.IMAGENET_STD)]
    if not resize_im:
        return transforms.Compose(normalize)
    if config.TEST.CROP:
        return recipe.timm_transform(False, size, interpolation=config.DATA.INTERPOLATION, crop_pct=224 / 256)
    mode = transforms.InterpolationMode(config.DATA.INTERPOLATION)
    return transforms.Compose([transforms.Resize((size, size), interpolation=mode)] + normalize)


def part_indices(n, rank, world_size, is_train):
    """The images process ``rank`` reads (and caches with ``--cache-mode part``): for training Swin's share
    ``rank, rank + world, ...``, cut to ``n // world`` images so that every process runs the same number of
    steps; for validation the contiguous shard of :class:`common.data.ShardSampler`."""
    if is_train:
        return list(range(rank, n, world_size))[:n // world_size]
    return cdata.ShardSampler(n, rank, world_size).indices


def _dataset(is_train, config, env=None):
    transform = build_transform(is_train, config)
    if config.DATA.DATASET == "cifar":
        return cdata.load_cifar(config.DATA.DATA_PATH, "cifar10", train=is_train, transform=transform)
    if config.DATA.DATASET != "imagenet":
        raise ConfigError(f"DATA.DATASET {config.DATA.DATASET!r} is not supported; use imagenet or cifar")
    split = "train" if is_train else "val"
    if config.DATA.ZIP_MODE:
        rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
        mode = config.DATA.CACHE_MODE if is_train else "part"
        if mode not in cdata.CACHE_MODES:
            raise ConfigError(f"DATA.CACHE_MODE {mode!r} is not one of {', '.join(cdata.CACHE_MODES)}")
        return cdata.load_zip_imagefolder(config.DATA.DATA_PATH, split, transform=transform, cache_mode=mode,
                                          cache_indices=lambda n: part_indices(n, rank, world, is_train))
    return cdata.load_imagefolder(config.DATA.DATA_PATH, split, transform=transform)


def build_loader(config, env):
    """``(dataset_train, dataset_val, loader_train, loader_val, mixup_fn)``: a DistributedSampler over the
    training set (per-epoch shuffle, ``drop_last``; each image's augmentation seeded by (SEED, epoch, index)),
    contiguous validation shards (exact sums across processes), timm's Mixup / CutMix when switched on."""
    train_set = _dataset(True, config, env)
    val_set = _dataset(False, config, env)
    train_set = cdata.SeededAugment(train_set, seed=config.SEED)
    if len(train_set) < config.DATA.BATCH_SIZE * env.world_size:
        raise ConfigError(f"the training set ({len(train_set)} images) is smaller than one global batch "
                          f"({config.DATA.BATCH_SIZE} x {env.world_size} processes); lower --batch-size")
    if config.DATA.ZIP_MODE and config.DATA.CACHE_MODE == "part":  # Swin: each process keeps to its cached share
        sampler = cdata.SubsetShuffleSampler(part_indices(len(train_set), env.rank, env.world_size, True),
                                             seed=config.SEED)
    else:
        sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=config.SEED)
    pin = config.DATA.PIN_MEMORY and env.device.type == "cuda"
    workers = config.DATA.NUM_WORKERS
    loader_train = DataLoader(train_set, sampler=sampler, batch_size=config.DATA.BATCH_SIZE, num_workers=workers,
                              pin_memory=pin, drop_last=True)  # workers restart every epoch: they see set_epoch
    loader_val = DataLoader(val_set, sampler=cdata.ShardSampler(len(val_set), env.rank, env.world_size),
                            batch_size=config.DATA.BATCH_SIZE, num_workers=workers, pin_memory=pin,
                            drop_last=False)
    aug = config.AUG
    mixup_fn = None
    if aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None:
        mixup_fn = recipe.build_mixup(config.MODEL.NUM_CLASSES, aug.MIXUP, aug.CUTMIX, cutmix_minmax=aug.CUTMIX_MINMAX,
                                      prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                                      smoothing=config.MODEL.LABEL_SMOOTHING)
    return train_set, val_set, loader_train, loader_val, mixup_fn


# ---------------------------------------------------------------------------------------- optimizer, amp
def build_optimizer(config, model):
    """Swin's: AdamW (or Nesterov SGD) without weight decay on 1-D parameters, ``.bias`` and the model's
    ``no_weight_decay()`` / ``no_weight_decay_keywords()``."""
    opt = config.TRAIN.OPTIMIZER
    name = opt.NAME.lower()
    if name == "adamw":
        return recipe.build_optimizer(model, "adamw", config.TRAIN.BASE_LR, config.TRAIN.WEIGHT_DECAY,
                                      eps=opt.EPS, betas=tuple(opt.BETAS))
    if name == "sgd":
        return recipe.build_optimizer(model, "sgd", config.TRAIN.BASE_LR, config.TRAIN.WEIGHT_DECAY,
                                      momentum=opt.MOMENTUM)
    raise ConfigError(f"TRAIN.OPTIMIZER.NAME {opt.NAME!r} is not supported; use adamw or sgd")


def build_scheduler(config, optimizer, updates_per_epoch):
    """Swin's per-iteration schedule (cosine or step, linear warm-up from WARMUP_LR over WARMUP_EPOCHS)."""
    sched = config.TRAIN.LR_SCHEDULER
    if sched.NAME not in ("cosine", "step"):
        raise ConfigError(f"TRAIN.LR_SCHEDULER.NAME {sched.NAME!r} is not supported; use cosine or step")
    return recipe.build_scheduler(optimizer, sched.NAME, config.TRAIN.EPOCHS, updates_per_epoch=updates_per_epoch,
                                  warmup_epochs=config.TRAIN.WARMUP_EPOCHS, warmup_lr=config.TRAIN.WARMUP_LR,
                                  min_lr=config.TRAIN.MIN_LR, decay_epochs=sched.DECAY_EPOCHS,
                                  decay_rate=sched.DECAY_RATE)


def build_amp(config, device, amp_dtype=None):
    """AMP_OPT_LEVEL on torch.amp: '' / O0 = fp32; O1 / O2 = autocast in ``amp_dtype`` (default float16 on
    CUDA, bfloat16 elsewhere)."""
    level = config.AMP_OPT_LEVEL
    if level in ("", "O0"):
        return AmpConfig(None, device.type)
    if level not in AMP_LEVELS:
        raise ConfigError(f"AMP_OPT_LEVEL {level!r} is not one of {', '.join(AMP_LEVELS)}")
    name = amp_dtype or ("float16" if device.type == "cuda" else "bfloat16")
    return AmpConfig(getattr(torch, name), device.type)


def scale_lr(config, world_size):
    """The official linear scaling rule, in place: every LR times ``batch * world / 512`` (and times the
    accumulation steps when above 1)."""
    factor = config.DATA.BATCH_SIZE * world_size / 512.0
    if config.TRAIN.ACCUMULATION_STEPS > 1:
        factor *= config.TRAIN.ACCUMULATION_STEPS
    config.defrost()
    config.TRAIN.BASE_LR = config.TRAIN.BASE_LR * factor
    config.TRAIN.WARMUP_LR = config.TRAIN.WARMUP_LR * factor
    config.TRAIN.MIN_LR = config.TRAIN.MIN_LR * factor
    config.freeze()
    return config


# ---------------------------------------------------------------------------------------- checkpoints
def checkpointer(folder):
    """The official files: ``<OUTPUT>/ckpt_epoch_<epoch>.pth`` with ``model``, ``optimizer``,
    ``lr_scheduler``, ``max_accuracy``, ``epoch``, ``config`` (plus ``scaler``), and ``last_checkpoint``."""
    return ckpt.TrainingCheckpointer(folder, filename="ckpt_epoch_{epoch}.pth",
                                     keys={"scheduler": "lr_scheduler", "best_metric": "max_accuracy"})


def auto_resume_helper(output_dir):
    """The checkpoint to resume from: the one ``last_checkpoint`` names, else (as Swin) the newest ``*.pth``."""
    last = ckpt.find_last_checkpoint(output_dir)
    if last is not None:
        return last
    files = glob.glob(os.path.join(output_dir, "*.pth"))
    return max(files, key=os.path.getmtime) if files else None


def load_checkpoint(config, model, optimizer, lr_scheduler, scaler, log, trust=False):
    """Load ``MODEL.RESUME`` (official format: ``{'model': state_dict, ...}``) strictly into ``model``; unless
    EVAL_MODE, also the optimizer, scheduler and scaler states. Returns ``(max_accuracy, start_epoch)``."""
    path = config.MODEL.RESUME
    log(f"==============> Resuming form {path}....................")
    state = ckpt.load_checkpoint(path, trust=trust)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        found = ", ".join(map(str, list(state)[:8])) if isinstance(state, dict) else type(state).__name__
        raise ckpt.CheckpointError(f"{path} is not a DWNet checkpoint: expected a dict with a 'model' state dict "
                                   f"(the official format), found {found}")
    saver = checkpointer(config.OUTPUT)
    saver.restore(state, model=model, rng=False, source=f"checkpoint {path}")
    log("<All keys matched successfully>")
    max_accuracy, start_epoch = 0.0, config.TRAIN.START_EPOCH
    if not config.EVAL_MODE and all(k in state for k in ("optimizer", "lr_scheduler", "epoch")):
        try:
            saver.restore(state, optimizer=optimizer, scheduler=lr_scheduler,
                          scaler=scaler if scaler.is_enabled() else None, rng=False)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ckpt.CheckpointError(f"{path}: its optimizer / scheduler state does not fit this run "
                                       f"(another config?): {err}") from None
        start_epoch = int(state["epoch"]) + 1
        config.defrost()
        config.TRAIN.START_EPOCH = start_epoch
        config.freeze()
        log(f"=> loaded successfully '{path}' (epoch {state['epoch']})")
        max_accuracy = float(state.get("max_accuracy", 0.0))
    return max_accuracy, start_epoch


# ---------------------------------------------------------------------------------------- loops
def _memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / (1024.0 * 1024.0)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak RSS (Linux: KiB)


def _seed_epoch(config, env, epoch):
    ckpt.seed_everything(config.SEED + 1000003 * epoch + 7919 * env.rank)


def train_one_epoch(config, model, criterion, loader, optimizer, step, mixup_fn, epoch, env, log, detail=None):
    """One epoch over the step core, logging the official ``Train: [...]`` line every PRINT_FREQ batches."""
    model.train()
    num_steps = len(loader)
    dev = env.device
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    norm_sum = torch.zeros((), dtype=torch.float64, device=dev)
    n_seen, n_norm = 0, 0
    batch_time, last_norm = engine.AverageMeter(), None
    start = end = time.time()
    for idx, (samples, targets) in enumerate(loader):
        samples = samples.to(dev, non_blocking=True)
        targets = targets.to(dev, non_blocking=True)
        if mixup_fn is not None:
            samples, targets = mixup_fn(samples, targets)
        with step.forward(idx, num_steps, epoch):
            outputs = model(samples)
            loss = criterion(outputs, targets)
        result = step.backward(loss, detail=detail)
        loss_sum += loss.detach().to(torch.float64) * targets.shape[0]
        n_seen += targets.shape[0]
        if result.grad_norm is not None:
            last_norm = result.grad_norm.detach().to(torch.float64)
            norm_sum += last_norm
            n_norm += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        batch_time.update(time.time() - end)
        end = time.time()
        if idx % config.PRINT_FREQ == 0:
            lr = optimizer.param_groups[0]["lr"]
            etas = batch_time.avg * (num_steps - idx)
            norm_val = float(last_norm) if last_norm is not None else 0.0
            norm_avg = float(norm_sum) / n_norm if n_norm else 0.0
            log(f"Train: [{epoch}/{config.TRAIN.EPOCHS}][{idx}/{num_steps}]\t"
                f"eta {datetime.timedelta(seconds=int(etas))} lr {lr:.6f}\t"
                f"time {batch_time.val:.4f} ({batch_time.avg:.4f})\t"
                f"loss {float(loss.detach()):.4f} ({float(loss_sum) / n_seen:.4f})\t"
                f"grad_norm {norm_val:.4f} ({norm_avg:.4f})\t"
                f"mem {_memory_mb(dev):.0f}MB")
    log(f"EPOCH {epoch} training takes {datetime.timedelta(seconds=int(time.time() - start))}")
    return {"loss": float(loss_sum) / max(n_seen, 1)}


def validate(model, loader, env, amp, log):
    """Top-1 / top-5 and loss over the whole validation set (exact over processes); logs `` * Acc@1 .. Acc@5 ..``."""
    res = engine.evaluate(model, loader, nn.CrossEntropyLoss(), env, amp)
    log(f" * Acc@1 {res['top1']:.3f} Acc@5 {res['top5']:.3f}")
    return res["top1"], res["top5"], res["loss"]


@torch.no_grad()
def throughput(loader, model, env, amp, log):
    """The official measurement: on the first validation batch, 50 warm-up then 30 timed forward passes."""
    model.eval()
    for images, _ in loader:
        images = images.to(env.device, non_blocking=True)
        batch_size = images.shape[0]
        sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
        with amp.autocast():
            for _ in range(50):
                model(images)
            sync()
            log("throughput averaged with 30 times")
            tic1 = time.time()
            for _ in range(30):
                model(images)
            sync()
            tic2 = time.time()
        log(f"batch_size {batch_size} throughput {30 * batch_size / (tic2 - tic1)}")
        return 30 * batch_size / (tic2 - tic1)
    return None


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    """Parse the command line and run: train (resuming when asked), ``--eval`` or ``--throughput``.
    Returns a dict (``acc1`` / ``acc5`` / ``loss`` for --eval, ``max_accuracy`` after training,
    ``throughput``)."""
    env = D.init_distributed(device=_device_flag(argv))
    args, config = parse_option(argv)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ckpt.seed_everything(config.SEED + env.rank)
    scale_lr(config, env.world_size)
    log = setup_logging(config.OUTPUT, rank=env.rank, name=config.MODEL.NAME, filename=f"log_rank{env.rank}.txt",
                        fmt=LOG_FORMAT, datefmt=LOG_DATEFMT, file_all_ranks=True)
    if args.unknown:
        log.logger.warning(f"ignored unknown arguments: {' '.join(args.unknown)}")
    train_set, val_set, loader_train, loader_val, mixup_fn = build_loader(config, env)
    training = not (config.EVAL_MODE or config.THROUGHPUT_MODE)
    if env.is_main and training:
        path = dump_run_config(config.OUTPUT, config, filename="config.json")
        log(f"Full config saved to {path}")
    log(config.dump())

    log(f"Creating model:{config.MODEL.TYPE}/{config.MODEL.NAME}")
    model = build_model(config)
    log(str(model))
    model, bare = engine.prepare_model(model, engine.compile_args(args),
                                       env, broadcast_buffers=False)
    optimizer = build_optimizer(config, bare)
    amp = build_amp(config, env.device, args.amp_dtype)
    scaler = amp.make_scaler()
    log(f"number of params: {sum(p.numel() for p in bare.parameters() if p.requires_grad)}")
    if hasattr(bare, "flops"):
        log(f"number of GFLOPs: {bare.flops() / 1e9}")
    accum = max(1, config.TRAIN.ACCUMULATION_STEPS)
    updates_per_epoch = math.ceil(len(loader_train) / accum)
    lr_scheduler = build_scheduler(config, optimizer, updates_per_epoch)
    criterion = recipe.build_criterion(mixup_fn is not None, config.MODEL.LABEL_SMOOTHING)

    max_accuracy, start_epoch = 0.0, config.TRAIN.START_EPOCH
    if config.TRAIN.AUTO_RESUME:
        resume_file = auto_resume_helper(config.OUTPUT)
        if resume_file:
            if config.MODEL.RESUME:
                log.logger.warning(f"auto-resume changing resume file from {config.MODEL.RESUME} to {resume_file}")
            config.defrost()
            config.MODEL.RESUME = resume_file
            config.freeze()
            log(f"auto resuming from {resume_file}")
        else:
            log(f"no checkpoint found in {config.OUTPUT}, ignoring auto resume")
    if config.EVAL_MODE and not config.MODEL.RESUME:
        raise ckpt.CheckpointNotFoundError("--eval evaluates a checkpoint: give it with --resume <file.pth> (or "
                                           "--opts TRAIN.AUTO_RESUME True with a run folder that has one)")
    if config.MODEL.RESUME:
        max_accuracy, start_epoch = load_checkpoint(config, bare, optimizer, lr_scheduler, scaler, log,
                                                    trust=args.trust_checkpoint)
        acc1, acc5, loss = validate(model, loader_val, env, amp, log)
        log(f"Accuracy of the network on the {len(val_set)} test images: {acc1:.1f}%")
        if config.EVAL_MODE:
            return {"acc1": acc1, "acc5": acc5, "loss": loss}
    if config.THROUGHPUT_MODE:
        return {"throughput": throughput(loader_val, model, env, amp, log)}

    saver = checkpointer(config.OUTPUT)
    step = TrainStep(model, optimizer, amp=amp, scaler=scaler, clip_grad=config.TRAIN.CLIP_GRAD, accum_steps=accum,
                     grad_norm=True, scheduler=lr_scheduler, num_updates=start_epoch * updates_per_epoch)
    lr_scheduler.step_update(num_updates=step.num_updates)

    def detail():
        last = saver.last()
        return f"Last good checkpoint: {last if last else '(none written yet)'}."

    log("Start training")
    start_time = time.time()
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        _seed_epoch(config, env, epoch)
        loader_train.sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_one_epoch(config, model, criterion, loader_train, optimizer, step, mixup_fn, epoch, env, log, detail)
        if env.distributed:  # one set of BN statistics on every process: the one validated and saved
            from timm.utils import distribute_bn

            distribute_bn(bare, env.world_size, reduce=True)
        acc1, acc5, loss = validate(model, loader_val, env, amp, log)
        log(f"Accuracy of the network on the {len(val_set)} test images: {acc1:.1f}%")
        max_accuracy = max(max_accuracy, acc1)
        if env.is_main and (epoch % config.SAVE_FREQ == 0 or epoch == config.TRAIN.EPOCHS - 1):
            save_path = os.path.join(config.OUTPUT, f"ckpt_epoch_{epoch}.pth")
            log(f"{save_path} saving......")
            saver.save(model=bare, optimizer=optimizer, scheduler=lr_scheduler, scaler=scaler, epoch=epoch,
                       best_metric=max_accuracy, rng=False, extra={"config": config})
            log(f"{save_path} saved !!!")
        log(f"Max accuracy: {max_accuracy:.2f}%")
        D.barrier()
    log(f"Training time {datetime.timedelta(seconds=int(time.time() - start_time))}")
    return {"max_accuracy": max_accuracy}


def _device_flag(argv):
    """``--device`` is needed before the process group starts (the backend depends on it)."""
    args, _ = get_parser().parse_known_args(argv)
    return args.device


def cli(argv=None):
    """Run :func:`main`; bad input (config, data, checkpoint, a non-finite loss) ends with one ``error:`` line
    and exit status 2, never a traceback."""
    run_cli(main, argv, extra_errors=(NonFiniteLossError,), rank0_only=True)


if __name__ == "__main__":
    cli()
