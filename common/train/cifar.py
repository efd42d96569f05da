"""The CIFAR training script of the pytorch-classification lineage, shared by the papers' ``cifar.py``.

DIANet's and DLA's ``cifar.py`` are the same script with a different model zoo: the same flags and defaults,
SGD + cross-entropy, the step learning-rate rule, evaluation on the test set after every epoch, the official
``log.txt`` and checkpoint layout. A paper's ``cifar.py`` is a few lines over this module::

    parser = get_parser("PyTorch CIFAR10/100 Training (DLA)", MODEL_NAMES, workers=8)
    parser.add_argument("--drop-path", ...)                 # the paper's own flags
    args = parser.parse_args(argv)
    run(args, build_model, MODEL_NAMES)                      # build_model(args, num_classes) -> nn.Module

What it adds to the official script: ``--data-root`` / ``--demo`` (the bundled digits set), the speed flags of
:func:`common.engine.add_engine_args`, multi-process training (torchrun / ``torch.distributed.launch``) where
each global batch is cut into per-rank shards, safe ``--resume`` (``--trust-checkpoint`` for a trusted file
that needs a full unpickle), an exact resume (RNG, data order, learning rate), ``config.yaml`` with the
resolved flags, ``log.jsonl``, TensorBoard and ``log.png`` (the learning curves) next to ``log.txt``, and one clear message for every bad input.
"""
import argparse
import os

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from common import checkpoint as ckpt
from common import data as cdata
from common import distributed as D
from common import engine
from common.config import dump_run_config
from common.logging import JsonlLogger, OfficialLogger, TBWriter, setup_logging
from common.plots import plot_curves, read_jsonl
from common.registry import UnknownModelError
from common.train.cli import cli, nonfinite_exit  # noqa: F401  (cli: the entry of the papers' cifar.py)

__all__ = ["get_parser", "lr_at", "checkpointer", "build_loaders", "run", "cli", "OFFICIAL_COLUMNS"]

# log.txt columns of the official script: (header name, key of the epoch record)
OFFICIAL_COLUMNS = (("Learning Rate", "lr"), ("Train Loss", "train_loss"), ("Valid Loss", "test_loss"),
                    ("Train Acc.", "train_top1"), ("Valid Acc.", "test_top1"))


def get_parser(description, model_names, *, workers=4, default_arch="resnet20"):
    """The official flags and defaults (``-j`` and the ``-a`` default differ between the papers), plus
    ``--data-root`` / ``--demo``, ``--trust-checkpoint``, the speed flags and the distributed flags."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("-d", "--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("-j", "--workers", default=workers, type=int, metavar="N", help="data loading workers")
    p.add_argument("--epochs", default=300, type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N", help="manual epoch number")
    p.add_argument("--train-batch", default=128, type=int, metavar="N", help="global train batch size")
    p.add_argument("--test-batch", default=100, type=int, metavar="N", help="test batch size")
    p.add_argument("--lr", "--learning-rate", default=0.1, type=float, metavar="LR", help="initial learning rate")
    p.add_argument("--drop", "--dropout", default=0, type=float, metavar="Dropout", help="dropout ratio")
    p.add_argument("--schedule", type=int, nargs="+", default=[150, 225],
                   help="decrease learning rate at these epochs")
    p.add_argument("--gamma", type=float, default=0.1, help="lr is multiplied by gamma on schedule")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum")
    p.add_argument("--weight-decay", "--wd", default=5e-4, type=float, metavar="W", help="weight decay (default 5e-4)")
    p.add_argument("-c", "--checkpoint", default="checkpoint", type=str, metavar="PATH",
                   help="folder for checkpoints and logs")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to a checkpoint to resume from")
    ckpt.add_trust_arg(p)
    p.add_argument("--arch", "-a", metavar="ARCH", default=default_arch,
                   help="model architecture: " + " | ".join(model_names))
    p.add_argument("--depth", type=int, default=29, help="model depth")
    p.add_argument("--block-name", type=str, default="BasicBlock",
                   help="building block for ResNet / PreResNet: BasicBlock or Bottleneck")
    p.add_argument("--cardinality", type=int, default=8, help="ResNeXt cardinality (groups)")
    p.add_argument("--widen-factor", type=int, default=4, help="WRN widen factor / ResNeXt width divisor")
    p.add_argument("--growthRate", type=int, default=12, help="growth rate (DenseNet; unused)")
    p.add_argument("--compressionRate", type=int, default=2, help="compression rate (DenseNet; unused)")
    p.add_argument("--length", type=int, default=8, help="unused (kept for compatibility)")
    p.add_argument("--manualSeed", type=int, default=None, help="manual seed (default: random)")
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true", help="evaluate model on the test set")
    p.add_argument("--gpu-id", default="0", type=str, help="ignored (use CUDA_VISIBLE_DEVICES)")
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="datasets",
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ (default: datasets)")
    g.add_argument("--demo", action="store_true",
                   help="use the bundled demo set (scikit-learn digits as CIFAR-10 pickles, built under --data-root)")
    engine.add_engine_args(p)
    D.add_dist_args(p)
    return p


def lr_at(args, epoch, first_epoch=0):
    """The official step rule: starting from ``--lr`` at ``first_epoch``, lr is multiplied by gamma at the
    start of every epoch listed in ``--schedule`` (a milestone listed twice counts once, as officially).

    ``first_epoch`` is ``--start-epoch`` for a fresh run (as officially: lr starts at ``--lr`` there) and 0 for
    a resumed run: after ``--resume`` the lr follows the schedule from epoch 0, so a resumed run trains with
    the lr of the uninterrupted run (officially it keeps the checkpoint optimizer's lr until the next
    milestone, then jumps to ``--lr * gamma``, and logs ``--lr``).
    """
    return args.lr * args.gamma ** sum(first_epoch <= m <= epoch for m in set(args.schedule))


def checkpointer(folder):
    """The official layout: ``checkpoint.pth.tar`` every epoch (copied to ``model_best.pth.tar``), keys
    ``epoch``, ``state_dict`` (``module.``-prefixed), ``best_acc``, ``optimizer`` (+ ``acc``, ``scaler``,
    ``rng_state``, ``seed``, ``arch``, ``args``)."""
    return ckpt.TrainingCheckpointer(folder, filename="checkpoint.pth.tar", best_filename="model_best.pth.tar",
                                     keys={"model": "state_dict", "best_metric": "best_acc", "rng": "rng_state"},
                                     model_prefix="module.")


def build_loaders(args, env, root, dataset):
    """Train loader (seeded per-sample augmentation, each global batch cut into per-rank shards) and the
    sharded test loader."""
    train_set = cdata.SeededAugment(
        cdata.load_cifar(root, dataset, train=True, transform=cdata.cifar_transforms(True)), seed=args.manualSeed)
    test_set = cdata.load_cifar(root, dataset, train=False, transform=cdata.cifar_transforms(False))
    sampler = cdata.GlobalBatchSampler(len(train_set), args.train_batch, env.rank, env.world_size, shuffle=True,
                                       seed=args.manualSeed)
    pin = env.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=args.workers, pin_memory=pin)
    test_loader = DataLoader(test_set, batch_size=args.test_batch, num_workers=args.workers, pin_memory=pin,
                             sampler=cdata.ShardSampler(len(test_set), env.rank, env.world_size))
    return train_set, sampler, train_loader, test_loader


def run(args, build_model, model_names, *, columns=OFFICIAL_COLUMNS, title_prefix="cifar-10-", copies=None):
    """Train (or with ``-e`` only evaluate) ``build_model(args, num_classes)`` as the official script does.

    ``columns``: the ``log.txt`` columns as (header, record key); the record keys are ``epoch``, ``lr``,
    ``train_loss``, ``train_top1``, ``train_top5``, ``test_loss``, ``test_top1``, ``test_top5``, ``best_acc``.
    ``copies(epoch)``: names of extra copies of the checkpoint written after the 0-based ``epoch`` (a paper's own
    official files, e.g. DIANet's ``checkpoint_50.pth.tar``); none by default.
    Returns the evaluation result (``-e``) or ``{"best_acc": ...}``.
    """
    if args.arch not in model_names:
        raise UnknownModelError(f"unknown architecture -a {args.arch!r}; choose one of: {', '.join(model_names)}")
    env = D.init_distributed(args.local_rank, device=args.device)
    log = setup_logging(rank=env.rank)

    resume_state = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint) if args.resume else None
    args.manualSeed = D.agree_on_seed(args.manualSeed, (resume_state or {}).get("seed"))
    ckpt.seed_everything(args.manualSeed)

    dataset, root = args.dataset, args.data_root
    if args.demo:
        if env.is_main:
            cdata.build_demo_cifar(args.data_root)
        D.barrier()
        root, dataset = cdata.build_demo_cifar(args.data_root), "cifar10"
    num_classes = 10 if dataset == "cifar10" else 100
    log(f"==> Preparing dataset {'digits demo (CIFAR-10 format)' if args.demo else dataset} from {root}")
    train_set, sampler, train_loader, test_loader = build_loaders(args, env, root, dataset)

    log(f"==> creating model '{args.arch}'")
    model = build_model(args, num_classes)
    log("    Total params: %.2fM" % (sum(p.numel() for p in model.parameters()) / 1e6))
    if resume_state is not None:
        ckpt.load_state_dict_strict(model, resume_state["state_dict"], source=f"checkpoint {args.resume}")
    model, bare = engine.prepare_model(model, args, env)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    amp = engine.amp_from_args(args, env.device)
    scaler = amp.make_scaler()
    if env.is_main and not args.evaluate:  # the resolved flags of a training run; -e leaves the folder alone
        dump_run_config(args.checkpoint, args)
    best_acc, start_epoch = 0.0, args.start_epoch
    saver = checkpointer(args.checkpoint)
    resumed = resume_state is not None
    if resumed:
        log("==> Resuming from checkpoint..")
        best_acc = float(resume_state.get("best_acc", 0.0))
        start_epoch = int(resume_state["epoch"])
        saver.restore(resume_state, optimizer=optimizer, scaler=scaler)
    if args.evaluate:  # evaluation only: the training logs and checkpoints are left as they are
        log("\nEvaluation only")
        res = engine.evaluate(model, test_loader, criterion, env, amp, args.channels_last)
        log(" Test Loss:  %.8f, Test Acc:  %.2f" % (res["loss"], res["top1"]))
        return res

    if env.is_main:
        os.makedirs(args.checkpoint, exist_ok=True)
    keep = start_epoch if resumed else None
    logger = OfficialLogger(os.path.join(args.checkpoint, "log.txt"), title=title_prefix + args.arch,
                            resume=resumed, keep_rows=keep)
    logger.set_names([name for name, _ in columns])
    jsonl = JsonlLogger(os.path.join(args.checkpoint, "log.jsonl"), resume=resumed, keep_rows=keep)
    tb = TBWriter(os.path.join(args.checkpoint, "tb"))

    for epoch in range(start_epoch, args.epochs):
        lr = lr_at(args, epoch, first_epoch=0 if resumed else args.start_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        log("\nEpoch: [%d | %d] LR: %f" % (epoch + 1, args.epochs, lr))
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        try:
            tr = engine.train_one_epoch(model, train_loader, criterion, optimizer, env, amp, scaler, epoch,
                                        clip_grad=args.clip_grad, channels_last=args.channels_last,
                                        print_freq=args.print_freq, log=log)
        except engine.NonFiniteLossError as err:
            raise nonfinite_exit(err, os.path.join(args.checkpoint, "checkpoint.pth.tar"))
        te = engine.evaluate(model, test_loader, criterion, env, amp, args.channels_last)
        is_best = te["top1"] > best_acc
        best_acc = max(te["top1"], best_acc)
        if env.is_main:
            saver.save(model=bare, optimizer=optimizer, scaler=scaler, epoch=epoch + 1, best_metric=best_acc,
                       is_best=is_best, copies=list(copies(epoch)) if copies else (),
                       extra={"acc": te["top1"], "seed": args.manualSeed, "arch": args.arch, "args": vars(args)})
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
                      "train_top5": tr["top5"], "test_loss": te["loss"], "test_top1": te["top1"],
                      "test_top5": te["top5"], "best_acc": best_acc}
            logger.append([record[key] for _, key in columns])
            jsonl.log(record)
            tb.scalars({k: v for k, v in record.items() if k != "epoch"}, epoch + 1)
        D.barrier()
    logger.close()
    tb.close()
    if env.is_main:  # the learning curves as a picture (the official script plots log.eps)
        plot_curves(read_jsonl(jsonl.path), os.path.join(args.checkpoint, "log.png"), title=title_prefix + args.arch)
    log("Best acc:")
    log(best_acc)
    return {"best_acc": best_acc}
