"""Train / evaluate the DLA ImageNet models — the official ``imagenet/train.py`` flags and defaults, over ``common``.

    python dla/train.py ~/workspace/imagenet -a resnet50_dla_l -b 256 --epochs 100 --warmup-epochs 3 \
        --world-size 1 --rank 0 --workers 10
    torchrun --nproc_per_node 8 dla/train.py /data/imagenet -a resnet50_dla_l -b 256 --epochs 100 --warmup-epochs 3
    python dla/train.py -a resnet50_dla_l --demo --img-size 64 -b 32 -j 0        # no data needed (CPU)

The pytorch/examples + MRLA script: SGD (momentum 0.9, ``--wd`` on every parameter; parameters whose name
contains ``layer_atten`` get ``--wd-la`` when it differs), plain cross-entropy, the per-epoch LR of the official
``gen_lr`` (``common.train.recipe.examples_lr``: epoch 0 at ``--warmup-lr``, then ``lr * e / warmup_epochs``
during the warm-up, afterwards ``lr * 0.1 ** (e // 30)``), RandomResizedCrop + flip for training, Resize(256) +
CenterCrop(224) for validation, evaluation after every epoch. The model is ``dla.create_model(arch,
num_classes=<classes of train/>, drop_rate=--drop, drop_path=--drop_path)`` (every architecture accepts
``drop_path``; officially the baselines raised a TypeError).

Outputs, in ``<--work-dir>/<arch>_<--action>/`` (written by rank 0): ``checkpoint.pth.tar`` after every epoch
(``epoch``, ``state_dict`` with the ``module.`` prefix, ``best_acc1``, ``optimizer``; plus ``rng_state``,
``seed``, ``arch``, ``args``), ``model_best.pth.tar``, ``checkpoint{epoch}.pth.tar`` when ``(epoch + 1) % 30 == 0``
or (epoch > 91 and best), the ``last_checkpoint`` pointer (``slurm/launch.py`` resumes from it) and the official
curve logs ``loss_plot.txt``, ``valloss_plot.txt``, ``train_acc1.txt``, ``train_acc5.txt``, ``val_acc1.txt``,
``val_acc5.txt``, one ``epoch value`` line per epoch (epoch counted from 0, as officially).

Launch modes (``common.distributed.launch_examples``): one process; ``--multiprocessing-distributed`` (one
process per GPU of this node, or ``--nprocs`` processes, one by default on a CPU-only node; ``--world-size``
nodes, ``--rank`` this node);
``torchrun`` / ``python -m torch.distributed.launch`` / SLURM; CPU processes use gloo. ``-b`` and ``-j`` are
totals over the processes (each gets ``b / processes``).

Additions: ``--demo`` (the bundled digits ImageFolder, built under ``data``, default ``datasets``),
``--img-size`` (train crop; validation resizes to ``img_size / 0.875`` and crops ``img_size``),
``--steps-per-epoch`` (stop each epoch's training after that many batches: quick runs), ``--nprocs``,
``--trust-checkpoint``. Fixed official defects: runs on CPU; the curve logs hold plain numbers (officially
``tensor(76.1, device='cuda:0')``) and a resumed run continues them without duplicates; ``--resume`` loads safely
(``weights_only``; a checkpoint of another architecture is one message naming the keys) and restores the RNG and
data order; a bad ``-a``, missing data or a non-finite loss is one ``error:`` line (exit 2), never a traceback.
"""
import argparse
import itertools
import math
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import dla  # noqa: E402
from common import checkpoint as ckpt  # noqa: E402
from common import data as cdata  # noqa: E402
from common import distributed as D  # noqa: E402
from common import engine  # noqa: E402
from common.logging import setup_logging  # noqa: E402
from common.registry import UnknownModelError  # noqa: E402
from common.train import recipe  # noqa: E402
from common.train.cli import cli as run_cli  # noqa: E402
from common.train.cli import nonfinite_exit  # noqa: E402

MODEL_NAMES = dla.list_models()
#: the official curve logs: file name -> key of the epoch record
CURVES = {"loss_plot.txt": "train_loss", "valloss_plot.txt": "val_loss", "train_acc1.txt": "train_top1",
          "train_acc5.txt": "train_top5", "val_acc1.txt": "val_top1", "val_acc5.txt": "val_top5"}


def get_parser():
    p = argparse.ArgumentParser(description="PyTorch ImageNet Training (DLA)")
    p.add_argument("data", metavar="DIR", nargs="?", default=None,
                   help="path to dataset (train/ and val/ ImageFolders); with --demo, where the demo set is built "
                        "(default: datasets)")
    p.add_argument("-a", "--arch", metavar="ARCH", default="dla_50", help="model architecture: "
                   + " | ".join(MODEL_NAMES))
    p.add_argument("--work-dir", default="work_dirs", type=str, help="folder of the run folders")
    p.add_argument("-j", "--workers", default=16, type=int, metavar="N", help="data loading workers (total)")
    p.add_argument("--epochs", default=100, type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="manual epoch number")
    p.add_argument("--warmup-epochs", default=0, type=int, metavar="N", help="warm-up epochs")
    p.add_argument("--warmup-lr", default=0.0001, type=float, metavar="LR", help="lr of epoch 0 in the warm-up")
    p.add_argument("-b", "--batch-size", default=256, type=int, metavar="N",
                   help="mini-batch size, total over all processes")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", help="initial learning rate")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum")
    p.add_argument("--wd", "--weight-decay", default=1e-4, type=float, metavar="W", dest="weight_decay",
                   help="weight decay")
    p.add_argument("--wd-la", "--weight-decay-la", default=1e-4, type=float, metavar="W", dest="wd_la",
                   help="weight decay of the layer-attention parameters (names containing 'layer_atten')")
    p.add_argument("--drop", default=0.0, type=float, metavar="P", help="dropout before the classifier")
    p.add_argument("--drop-path", default=0.2, type=float, metavar="P",
                   help="stochastic depth rate of the layer-attention branches")
    p.add_argument("-p", "--print-freq", default=10, type=int, metavar="N", help="print frequency (0: never)")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to a checkpoint to resume from")
    ckpt.add_trust_arg(p)
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    p.add_argument("--seed", default=None, type=int, help="seed for initializing training")
    p.add_argument("--action", default="", type=str, help="suffix of the run folder <arch>_<action>")
    D.add_examples_dist_args(p)
    g = p.add_argument_group("additions")
    engine.add_compile_args(g)
    g.add_argument("--demo", action="store_true",
                   help="use the bundled demo ImageFolder (scikit-learn digits, 10 classes, built under DIR)")
    g.add_argument("--img-size", default=224, type=int, help="train / validation crop (default 224)")
    g.add_argument("--steps-per-epoch", default=0, type=int, metavar="N",
                   help="stop each epoch's training after N batches (0: the whole set); validation is whole")
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--nprocs", default=None, type=int, metavar="N",
                   help="processes per node of --multiprocessing-distributed (default: the GPUs of the node, "
                        "1 on a CPU-only node)")
    return p


def run_dir(args):
    return os.path.join(args.work_dir, f"{args.arch}_{args.action}")


def checkpointer(folder):
    """The official files: ``checkpoint.pth.tar`` (keys ``epoch``, ``state_dict``, ``best_acc1``, ``optimizer``)
    and ``model_best.pth.tar``, plus the ``last_checkpoint`` pointer."""
    return ckpt.TrainingCheckpointer(folder, filename="checkpoint.pth.tar", best_filename="model_best.pth.tar",
                                     keys={"model": "state_dict", "best_metric": "best_acc1", "rng": "rng_state"},
                                     model_prefix="module.")


def build_optimizer(model, args):
    """SGD on every parameter with ``--wd``; names containing ``layer_atten`` with ``--wd-la`` when it differs."""
    overrides = [("*layer_atten*", {"weight_decay": args.wd_la})] if args.wd_la != args.weight_decay else []
    return recipe.build_optimizer(model, opt="momentum", lr=args.lr, weight_decay=args.weight_decay,
                                  momentum=args.momentum, filter_bias_and_bn=False, no_weight_decay=(),
                                  overrides=overrides)


class _Limited:
    """The first ``n`` batches of a loader (all of them when ``n`` is 0); the sampler's next epoch starts anew."""

    def __init__(self, loader, n):
        self.loader, self.n = loader, n

    def __len__(self):
        return min(len(self.loader), self.n) if self.n else len(self.loader)

    def __iter__(self):
        return itertools.islice(iter(self.loader), len(self))


def _data_root(args):
    if args.demo:
        return cdata.build_demo_imagefolder(args.data or "datasets")
    return os.path.expanduser(args.data)


def _write_curves(folder, records):
    for name, key in CURVES.items():
        path = os.path.join(folder, name)
        text = "".join(f"{r['epoch']} {r[key]:.6f}\n" for r in records)
        ckpt.atomic_write(path, lambda f, t=text: f.write(t.encode()))


def _read_curves(folder, before_epoch):
    """Records of epochs ``< before_epoch`` from an earlier run's curve logs (a resumed run continues them)."""
    records = {}
    for name, key in CURVES.items():
        try:
            with open(os.path.join(folder, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and int(parts[0]) < before_epoch:
                        records.setdefault(int(parts[0]), {"epoch": int(parts[0])})[key] = float(parts[1])
        except (OSError, ValueError):
            return []
    return [r for _, r in sorted(records.items()) if len(r) == len(CURVES) + 1]


def main_worker(env, args):
    log = setup_logging(rank=env.rank)
    resume_state = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint) if args.resume else None
    seed = D.agree_on_seed(args.seed, (resume_state or {}).get("seed"))
    ckpt.seed_everything(seed)
    if args.seed is not None and env.device.type == "cuda":
        torch.backends.cudnn.deterministic = True
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    if args.demo and env.is_main:
        _data_root(args)
    D.barrier()
    root = _data_root(args)
    val_resize = int(round(args.img_size / 0.875))
    train_set = cdata.SeededAugment(cdata.load_imagefolder(root, "train", cdata.imagenet_transforms(
        True, size=args.img_size)), seed=seed)
    val_set = cdata.load_imagefolder(root, "val", cdata.imagenet_transforms(False, size=args.img_size,
                                                                             resize=val_resize))
    num_classes = len(train_set.dataset.classes)
    procs = env.world_size
    workers = int(math.ceil(args.workers / procs))
    sampler = cdata.GlobalBatchSampler(len(train_set), args.batch_size, env.rank, procs, shuffle=True, seed=seed)
    pin = env.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, pin_memory=pin)
    val_loader = DataLoader(val_set, batch_size=max(args.batch_size // procs, 1), num_workers=workers,
                            pin_memory=pin, sampler=cdata.ShardSampler(len(val_set), env.rank, procs))
    train_loader = _Limited(train_loader, args.steps_per_epoch)

    log(f"=> creating model '{args.arch}' ({num_classes} classes; {procs} process{'es' if procs > 1 else ''})")
    model = dla.create_model(args.arch, num_classes=num_classes, drop_rate=args.drop, drop_path=args.drop_path)
    if resume_state is not None:
        ckpt.load_state_dict_strict(model, resume_state["state_dict"], source=f"checkpoint {args.resume}")
    model, bare = engine.prepare_model(model, args, env)
    criterion = nn.CrossEntropyLoss()
    optimizer = build_optimizer(bare, args)
    amp = engine.AmpConfig(None, env.device.type)
    folder = run_dir(args)
    saver = checkpointer(folder)
    best_acc1, start_epoch = 0.0, args.start_epoch
    if resume_state is not None:
        log(f"=> loaded checkpoint '{args.resume}' (epoch {resume_state['epoch']})")
        best_acc1 = float(resume_state.get("best_acc1", 0.0))
        start_epoch = int(resume_state["epoch"])
        saver.restore(resume_state, optimizer=optimizer)

    def validate():
        res = engine.evaluate(model, val_loader, criterion, env, amp)
        log(" * Acc@1 %.3f Acc@5 %.3f Loss %.4f" % (res["top1"], res["top5"], res["loss"]))
        return res

    if args.evaluate:
        return validate()

    if env.is_main:
        os.makedirs(folder, exist_ok=True)
    records = _read_curves(folder, start_epoch) if resume_state is not None else []
    for epoch in range(start_epoch, args.epochs):
        lr = recipe.examples_lr(epoch, args.lr, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr)
        recipe.set_lr(optimizer, lr)
        log("Epoch: [%d] LR %.6f" % (epoch, lr))
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        try:
            tr = engine.train_one_epoch(model, train_loader, criterion, optimizer, env, amp, None, epoch,
                                        print_freq=args.print_freq, log=log)
        except engine.NonFiniteLossError as err:
            raise nonfinite_exit(err, os.path.join(folder, "checkpoint.pth.tar"))
        va = validate()
        is_best = va["top1"] > best_acc1
        best_acc1 = max(va["top1"], best_acc1)
        if env.is_main:
            copies = [f"checkpoint{epoch}.pth.tar"] if (epoch + 1) % 30 == 0 or (epoch > 91 and is_best) else []
            saver.save(model=bare, optimizer=optimizer, epoch=epoch + 1, best_metric=best_acc1, is_best=is_best,
                       copies=copies, extra={"seed": seed, "arch": args.arch, "args": vars(args)})
            records.append({"epoch": epoch, "train_loss": tr["loss"], "val_loss": va["loss"],
                            "train_top1": tr["top1"], "train_top5": tr["top5"], "val_top1": va["top1"],
                            "val_top5": va["top5"]})
            _write_curves(folder, records)
        D.barrier()
    log(f" * best Acc@1 {best_acc1:.3f}")
    return {"best_acc1": best_acc1}


def check_args(parser, args):
    """Bad input found before any process starts: one message."""
    if args.arch not in MODEL_NAMES:
        raise UnknownModelError(f"unknown architecture -a {args.arch!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if not args.demo:
        if not args.data:
            parser.error("the dataset folder DIR is required (or use --demo)")
        root = os.path.expanduser(args.data)
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(root, split)):
                cdata.load_imagefolder(root, split)  # one message naming the path, the layout and --demo
    if args.resume and not os.path.isfile(args.resume):
        raise ckpt.CheckpointError(f"--resume: no checkpoint file at {args.resume!r}")


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return D.launch_examples(main_worker, args, nprocs=args.nprocs, device=args.device)


def cli(argv=None):
    """``main``; bad input ends with one ``error:`` line and exit status 2."""
    run_cli(main, argv)


if __name__ == "__main__":
    cli()
