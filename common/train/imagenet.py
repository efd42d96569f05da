"""The ImageNet training script of the pytorch/examples lineage, shared by DLA's ``train.py`` / ``train_pro.py``
and RLA-Net's ``train.py`` / ``train_light.py``.

A paper's script keeps its own parser (the official flags and defaults; :func:`add_examples_args` adds the ones
they share) and a :class:`Recipe` subclass with what differs: the model dispatch, the optimizer, the LR rule
(per epoch or per iteration), the loss, the curve logs and the extra checkpoint copies::

    class MyRecipe(Recipe):
        def build_model(self, args, num_classes):
            return mypaper.create_model(args.arch, num_classes=num_classes)

    def main(argv=None):
        return launch(get_parser().parse_args(argv), MyRecipe())

What this module does once for all of them: seeding (a seed is always drawn and saved, ``--seed`` also sets
``cudnn.deterministic``), the data (``DIR/{train,val}`` ImageFolders or ``--demo``, the bundled digits set,
built by the main process; ``-b`` / ``-j`` are totals over the processes of a node, as officially), the epoch
loop with validation after every epoch, the official progress lines ``Epoch: [e][i/N]\\tLR ..\\tTime ..\\tData
..\\tLoss v (avg)\\tAcc@1 v (avg)\\tAcc@5 v (avg)`` (the LR is the optimizer's), ``Test: [i/N]\\tTime ..\\tLoss
..\\tAcc@1 ..\\tAcc@5 ..`` and `` * Acc@1 x Acc@5 y``,
checkpoints through :class:`common.checkpoint.TrainingCheckpointer` in the official layout
(``{work-dir}/{arch}_{action}/checkpoint.pth.tar``, ``model_best.pth.tar``), best-Acc@1 tracking, the official
``*.txt`` curve logs (``"{epoch} {value}"`` lines, epoch counted from 0, written by rank 0 only, plain
numbers), ``log.jsonl``, ``config.yaml`` and, at the end of a run, the learning curves as PNGs
(:func:`common.plots.plot_examples_curves`). A resumed run restores the model, optimizer, RNG state and data
order and continues the logs without duplicates; bad input is one message before any process starts.
"""
import argparse
import functools
import itertools
import math
import os
import time
import warnings

import torch
from torch.utils.data import DataLoader

from common import checkpoint as ckpt
from common import data as cdata
from common import distributed as D
from common import engine
from common.config import dump_run_config
from common.logging import JsonlLogger, setup_logging
from common.plots import EXAMPLES_CURVES, plot_examples_curves
from common.train import recipe as R
from common.train.cli import nonfinite_exit

__all__ = ["add_examples_args", "Recipe", "CurveLogs", "Limited", "run_dir", "checkpointer", "progress_line",
           "test_line", "summary_line", "epoch_record", "main_worker", "launch", "EXAMPLES_CURVES"]


def add_examples_args(p, *, arch, choices=None, workers=16, epochs=90, batch_size=256, lr=0.1, weight_decay=1e-4,
                      print_freq=10, world_size=-1, dist_backend="nccl", spawn_flags=True):
    """The flags every pytorch/examples-lineage script has, with the paper's defaults: ``DIR``, ``-a``,
    ``--work-dir``, ``-j``, ``--epochs``, ``--start-epoch``, ``-b``, ``--lr``, ``--momentum``, ``--wd``, ``-p``,
    ``--resume`` (+ ``--trust-checkpoint``), ``-e``, ``--seed``, ``--action``, the distributed flags, and the
    additions ``--demo`` and ``--nprocs``. Returns the ``additions`` argument group."""
    names = " | ".join(choices) if choices else ""
    p.add_argument("data", metavar="DIR", nargs="?", default=None,
                   help="path to dataset (DIR/train, DIR/val ImageFolders); with --demo, where the demo set is "
                        "built (default: datasets)")
    p.add_argument("-a", "--arch", metavar="ARCH", default=arch, choices=choices,
                   help=f"model architecture: {names} (default: {arch})")
    p.add_argument("--work-dir", default="work_dirs", type=str, help="folder of the run folders {arch}_{action}")
    p.add_argument("-j", "--workers", default=workers, type=int, metavar="N",
                   help=f"data loading workers, total over the processes of a node (default: {workers})")
    p.add_argument("--epochs", default=epochs, type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="manual epoch number (useful on restarts)")
    p.add_argument("-b", "--batch-size", default=batch_size, type=int, metavar="N",
                   help="mini-batch size, total over the processes of a node")
    p.add_argument("--lr", "--learning-rate", default=lr, type=float, metavar="LR", dest="lr",
                   help="initial learning rate")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum")
    p.add_argument("--wd", "--weight-decay", default=weight_decay, type=float, metavar="W", dest="weight_decay",
                   help=f"weight decay (default: {weight_decay:g})")
    p.add_argument("-p", "--print-freq", default=print_freq, type=int, metavar="N",
                   help="print frequency in batches (0: never)")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to a checkpoint to resume from")
    ckpt.add_trust_arg(p)
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    p.add_argument("--seed", default=None, type=int, help="seed for initializing training")
    p.add_argument("--action", default="", type=str, help="suffix of the run folder {arch}_{action}")
    D.add_examples_dist_args(p, world_size=world_size, dist_backend=dist_backend, spawn_flags=spawn_flags)
    g = p.add_argument_group("additions")
    g.add_argument("--demo", action="store_true",
                   help="use the bundled demo ImageFolder (scikit-learn digits, 10 classes), built under DIR")
    g.add_argument("--nprocs", default=None, type=int, metavar="N",
                   help="processes per node of --multiprocessing-distributed (default: the GPUs of the node, "
                        "1 on a CPU-only node)")
    return g


def run_dir(args):
    return os.path.join(args.work_dir, f"{args.arch}_{args.action}")


def checkpointer(folder):
    """The official files: ``checkpoint.pth.tar`` (keys ``epoch`` (the next one), ``state_dict`` with the
    ``module.`` prefix, ``best_acc1``, ``optimizer``) and ``model_best.pth.tar``, plus the ``last_checkpoint``
    pointer (what ``slurm/launch.py`` resumes from)."""
    return ckpt.TrainingCheckpointer(folder, filename="checkpoint.pth.tar", best_filename="model_best.pth.tar",
                                     keys={"model": "state_dict", "best_metric": "best_acc1", "rng": "rng_state"},
                                     model_prefix="module.")


class CurveLogs:
    """The official ``*.txt`` curve logs: ``files`` = ((file name, key of the epoch record), ...), one
    ``"{epoch} {value}"`` line per epoch, values as plain numbers (``repr`` of the float), written by the main
    process only. ``start_epoch`` keeps only the lines of epochs before it (a resumed run trains the others
    again), so a resumed run continues the logs without duplicates."""

    def __init__(self, folder, files, start_epoch=0, enabled=True):
        self.folder, self.files, self.enabled = folder, tuple(files), enabled
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        for name, _ in self.files:
            path = os.path.join(folder, name)
            kept = []
            if start_epoch > 0 and os.path.isfile(path):
                with open(path) as f:
                    kept = [ln for ln in f.read().splitlines() if ln.strip() and _epoch_of(ln) < start_epoch]
            ckpt.atomic_write(path, lambda f, t="".join(ln + "\n" for ln in kept): f.write(t.encode()))

    def append(self, epoch, record):
        if not self.enabled:
            return
        for name, key in self.files:
            with open(os.path.join(self.folder, name), "a") as f:
                f.write(f"{int(epoch)} {float(record[key])!r}\n")


def _epoch_of(line):
    try:
        return int(line.split()[0])
    except (ValueError, IndexError):
        return -1


class Limited:
    """The first ``n`` batches of a loader (all of them when ``n`` is 0); the sampler's next epoch starts anew."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __len__(self):
        return min(len(self.loader), self.n) if self.n else len(self.loader)

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))


def progress_line(epoch, i, n, lr, m):
    """The official training progress line (pytorch/examples as the DLA and RLA-Net scripts print it)."""
    return (f"Epoch: [{epoch}][{i}/{n}]\tLR {lr:.5f}\t"
            f"Time {m['batch_time'].val:.3f} ({m['batch_time'].avg:.3f})\t"
            f"Data {m['data_time'].val:.3f} ({m['data_time'].avg:.3f})\t"
            f"Loss {m['loss'].val:.4f} ({m['loss'].avg:.4f})\t"
            f"Acc@1 {m['top1'].val:.3f} ({m['top1'].avg:.3f})\t"
            f"Acc@5 {m['top5'].val:.3f} ({m['top5'].avg:.3f})")


def test_line(i, n, m):
    """The official validation progress line."""
    return (f"Test: [{i}/{n}]\tTime {m['batch_time'].val:.3f} ({m['batch_time'].avg:.3f})\t"
            f"Loss {m['loss'].val:.4f} ({m['loss'].avg:.4f})\t"
            f"Acc@1 {m['top1'].val:.3f} ({m['top1'].avg:.3f})\t"
            f"Acc@5 {m['top5'].val:.3f} ({m['top5'].avg:.3f})")


def summary_line(res, with_loss=False):
    """`` * Acc@1 x Acc@5 y`` (RLA-Net) or `` * Acc@1 x Acc@5 y Loss z`` (DLA) at the end of validation."""
    line = " * Acc@1 {:.3f} Acc@5 {:.3f}".format(res["top1"], res["top5"])
    return line + (" Loss {:.4f}".format(res["loss"]) if with_loss else "")


def epoch_record(epoch, lr, tr, va, best_acc1):
    """The epoch record of ``log.jsonl`` (and the source of every curve log)."""
    return {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"], "train_top5": tr["top5"],
            "test_loss": va["loss"], "test_top1": va["top1"], "test_top5": va["top5"], "best_acc1": best_acc1}


class Recipe:
    """What one paper's script does differently. The defaults are the plain pytorch/examples script: SGD on every
    parameter, plain cross-entropy, ``lr * 0.1 ** (epoch // 30)``, no extra checkpoint copies, the five curve
    logs of RLA-Net (see :data:`common.plots.EXAMPLES_CURVES`)."""

    #: the ``*.txt`` curve logs: ((file name, record key), ...)
    curve_files = EXAMPLES_CURVES
    #: whether the `` * Acc@1 .. Acc@5 ..`` line also prints the validation loss
    summary_loss = False
    #: flag names of the crop / validation resize sizes
    size_flags = ("image_size", "resize")

    # ---- model
    def build_model(self, args, num_classes):
        raise NotImplementedError

    def after_model(self, model, args, log):
        """Changes to the new model before it is moved / wrapped (e.g. RLA-Net's ``-pre``)."""

    def check_resume(self, args, num_classes, state):
        """Raise one message when the checkpoint ``state`` does not fit the model of ``args``."""
        model = self.build_model(args, num_classes)
        report = ckpt.check_state_dict(model, ckpt.strip_module_prefix(state.get("state_dict", state)))
        if report:
            raise ckpt.CheckpointMismatchError(f"checkpoint {args.resume} does not match {args.arch}:\n{report}")

    # ---- optimization
    def build_optimizer(self, model, args):
        return R.build_optimizer(model, "momentum", args.lr, args.weight_decay, args.momentum,
                                 filter_bias_and_bn=False, no_weight_decay=())

    def build_criterion(self, args, num_classes):
        return torch.nn.CrossEntropyLoss()

    def val_criterion(self, args, criterion):
        return torch.nn.CrossEntropyLoss()

    def epoch_lr(self, args, epoch):
        """The LR of ``epoch`` set at its start, or None when :meth:`build_scheduler` steps it per iteration."""
        return R.examples_lr(epoch, args.lr)

    def build_scheduler(self, optimizer, args, steps_per_epoch):
        """A per-iteration scheduler stepped after every optimizer step (None: the LR is set per epoch)."""
        return None

    def copies(self, epoch, is_best):
        """Extra copies of the checkpoint written after ``epoch`` (file names)."""
        return ()

    # ---- data
    def sizes(self, args):
        """(crop, validation resize) of the data pipeline."""
        crop_flag, resize_flag = self.size_flags
        crop = getattr(args, crop_flag)
        resize = getattr(args, resize_flag, None) if resize_flag else None
        return crop, resize or int(round(crop * 256 / 224))


def _data_root(args, env=None):
    if args.demo:
        folder = args.data or "datasets"
        if env is not None:
            if env.is_main:
                cdata.build_demo_imagefolder(folder)
            D.barrier()
        return cdata.build_demo_imagefolder(folder)
    if not args.data:
        raise cdata.DatasetNotFoundError(
            "no dataset given: pass DIR (laid out as DIR/{train,val}/<class>/<image>.JPEG, ImageFolder) or "
            "--demo for the bundled digits ImageFolder")
    return os.path.expanduser(args.data)


def _count_classes(args):
    if args.demo:
        return 10
    train_dir = os.path.join(_data_root(args), "train")
    return sum(os.path.isdir(os.path.join(train_dir, d)) for d in os.listdir(train_dir))


def precheck(args, recipe):
    """Bad input found before any process starts (one message rather than one traceback per process): the data
    folders, the ``--resume`` file and whether it fits ``-a``."""
    if not args.demo:
        root = _data_root(args)
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                cdata.load_imagefolder(root, split)  # one message naming the path, the layout and --demo
    if args.resume:
        state = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint)
        recipe.check_resume(args, _count_classes(args), state)


def _build_data(args, env, seed, recipe):
    root = _data_root(args, env)
    crop, resize = recipe.sizes(args)
    train_tf = cdata.imagenet_transforms(True, crop, resize)
    train_set = cdata.SeededAugment(cdata.load_imagefolder(root, "train", train_tf), seed=seed)
    val_set = cdata.load_imagefolder(root, "val", cdata.imagenet_transforms(False, crop, resize))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))  # the processes of a node share -b and -j
    batch = max(1, args.batch_size // local)
    workers = int(math.ceil(args.workers / local))
    sampler = cdata.GlobalBatchSampler(len(train_set), batch * env.world_size, env.rank, env.world_size,
                                       shuffle=True, seed=seed)
    pin = env.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, pin_memory=pin)
    val_loader = DataLoader(val_set, batch_size=batch, num_workers=workers, pin_memory=pin,
                            sampler=cdata.ShardSampler(len(val_set), env.rank, env.world_size))
    train_loader = Limited(train_loader, getattr(args, "steps_per_epoch", 0))
    return train_set, sampler, train_loader, val_loader, len(train_set.dataset.classes)


def main_worker(env, args, recipe):
    """One process of the run (see the module docstring)."""
    log = setup_logging(rank=env.rank)
    resume = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint) if args.resume else None
    seed = D.agree_on_seed(args.seed, (resume or {}).get("seed"))
    ckpt.seed_everything(seed)
    if env.device.type == "cuda":
        torch.backends.cudnn.deterministic = args.seed is not None
        torch.backends.cudnn.benchmark = args.seed is None

    train_set, sampler, train_loader, val_loader, num_classes = _build_data(args, env, seed, recipe)
    procs = env.world_size
    log(f"=> creating model '{args.arch}' ({num_classes} classes; {procs} process{'es' if procs > 1 else ''})")
    model = recipe.build_model(args, num_classes)
    recipe.after_model(model, args, log)
    if resume is not None:
        log(f"=> loading checkpoint '{args.resume}'")
        ckpt.load_state_dict_strict(model, resume.get("state_dict", resume), source=f"checkpoint {args.resume}")
    model, bare = engine.prepare_model(model, args, env)
    criterion = recipe.build_criterion(args, num_classes)
    val_criterion = recipe.val_criterion(args, criterion)
    optimizer = recipe.build_optimizer(bare, args)
    amp = engine.amp_from_args(args, env.device) if hasattr(args, "amp") else engine.AmpConfig(None, env.device.type)
    scaler = amp.make_scaler()
    channels_last = getattr(args, "channels_last", False)
    folder = run_dir(args)
    saver = checkpointer(folder)
    best_acc1, start_epoch = 0.0, args.start_epoch
    if resume is not None:
        saver.restore(resume, optimizer=optimizer if "optimizer" in resume else None, scaler=scaler,
                      rng="rng_state" in resume)
        start_epoch = int(resume.get("epoch", 0))
        best_acc1 = float(resume.get("best_acc1", 0.0))
        log(f"=> loaded checkpoint '{args.resume}' (epoch {start_epoch})")

    def validate():
        res = engine.evaluate(model, val_loader, val_criterion, env, amp, channels_last, progress=test_line,
                              print_freq=args.print_freq, log=log)
        log(summary_line(res, recipe.summary_loss))
        return res

    if args.evaluate:
        return validate()

    if env.is_main:  # the resolved flags of a training run; -e leaves the folder alone
        dump_run_config(folder, args)
    curves = CurveLogs(folder, recipe.curve_files, start_epoch, enabled=env.is_main)
    jsonl = JsonlLogger(os.path.join(folder, "log.jsonl"), resume=start_epoch > 0, keep_rows=start_epoch)
    steps = len(train_loader)
    scheduler = recipe.build_scheduler(optimizer, args, steps)
    if scheduler is not None and start_epoch:  # the position of a resumed (or --start-epoch) run
        _position(scheduler, start_epoch, steps)
    step = engine.TrainStep(model, optimizer, amp=amp, scaler=scaler, clip_grad=getattr(args, "clip_grad", None),
                            scheduler=scheduler)
    for epoch in range(start_epoch, args.epochs):
        lr = recipe.epoch_lr(args, epoch)
        if lr is not None:
            R.set_lr(optimizer, lr)
        lr = optimizer.param_groups[0]["lr"]
        log(f"Epoch: [{epoch}] LR {lr:.6g}")
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        line = functools.partial(_line, epoch, optimizer)
        t0 = time.perf_counter()
        try:
            tr = engine.train_one_epoch(model, train_loader, criterion, optimizer, env, amp, scaler, epoch,
                                        channels_last=channels_last, print_freq=args.print_freq, log=log,
                                        step=step, progress=line)
        except engine.NonFiniteLossError as err:
            raise nonfinite_exit(err, saver.last()) from None
        va = validate()
        is_best = va["top1"] > best_acc1
        best_acc1 = max(va["top1"], best_acc1)
        if env.is_main:
            # the epoch's log rows before its checkpoint: a stop in between leaves rows that the resumed run
            # (which restarts at the checkpoint's epoch) drops, never a checkpoint whose rows are missing
            record = epoch_record(epoch, lr, tr, va, best_acc1)
            record["lr_end"] = optimizer.param_groups[0]["lr"]
            curves.append(epoch, record)
            jsonl.log(record)
            saver.save(model=bare, optimizer=optimizer, scaler=scaler, epoch=epoch + 1, best_metric=best_acc1,
                       is_best=is_best, copies=list(recipe.copies(epoch, is_best)),
                       extra={"arch": args.arch, "seed": seed, "args": vars(args)})
        log(f"epoch {epoch} train_time (h): {(time.perf_counter() - t0) / 3600:.4f}")
        D.barrier()
    if env.is_main and start_epoch < args.epochs:
        plot_examples_curves(folder)
    log(f" * best Acc@1 {best_acc1:.3f}")
    return {"best_acc1": best_acc1}


def _position(scheduler, start_epoch, steps):
    """Put a per-iteration scheduler at the first step of ``start_epoch`` (``steps`` optimizer steps an epoch)."""
    scheduler.last_epoch = start_epoch * steps - 1
    with warnings.catch_warnings():  # "step() before optimizer.step()": intended here
        warnings.simplefilter("ignore", UserWarning)
        scheduler.step()


def _line(epoch, optimizer, i, n, meters):
    return progress_line(epoch, i, n, optimizer.param_groups[0]["lr"], meters)


def _worker(recipe, env, args):
    return main_worker(env, args, recipe)


def launch(args, recipe):
    """Check the input, then run in the launch mode the flags ask for (:func:`common.distributed.launch_examples`):
    one process, ``--multiprocessing-distributed`` (spawned here), or the processes of torchrun / SLURM (where
    the launcher already made the processes, ``--multiprocessing-distributed`` spawns nothing more)."""
    if getattr(args, "multiprocessing_distributed", False) and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        args.multiprocessing_distributed = False
    precheck(args, recipe)
    return D.launch_examples(functools.partial(_worker, recipe), args, nprocs=args.nprocs,
                             device=getattr(args, "device", None))


def parser(description):
    """An ``argparse.ArgumentParser`` whose later flags may replace earlier ones (the official ``-p`` over
    ``common.engine``'s ``--print-freq``)."""
    return argparse.ArgumentParser(description=description, conflict_handler="resolve")
