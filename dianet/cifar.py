"""Train / evaluate DIANet on CIFAR-10/100 — the official ``cifar.py`` flags and defaults, over ``common``.

    python dianet/cifar.py -a dia_resnet --train-batch 128 --dataset cifar100 --depth 164 \
        --block-name bottleneck --epochs 180 --schedule 60 120 --gamma 0.1 --wd 1e-4 \
        --checkpoint checkpoints/cifar100/resnet-164-dia-rate4

Additions to the official flags: ``--data-root`` (default ``datasets``), ``--demo`` (the bundled digits set),
mixed precision / channels_last / compile / grad clipping / sync-BN (``common.engine.add_engine_args``), and
multi-process training with torchrun or ``python -m torch.distributed.launch``.
Fixed official defects: runs on CPU; lr after ``--resume`` follows the schedule; resume restores RNG and data
order so a resumed run reproduces the uninterrupted one; accuracy works on modern torch.
"""
import argparse
import os
import random
import sys

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dianet  # noqa: E402
from common import checkpoint as ckpt  # noqa: E402
from common import data as cdata  # noqa: E402
from common import distributed as D  # noqa: E402
from common import engine  # noqa: E402
from common.config import dump_run_config  # noqa: E402
from common.logging import JsonlLogger, OfficialLogger, TBWriter, setup_logging  # noqa: E402
from common.registry import UnknownModelError  # noqa: E402

MODEL_NAMES = dianet.list_models()


def get_parser():
    p = argparse.ArgumentParser(description="PyTorch CIFAR10/100 Training (DIANet)")
    p.add_argument("-d", "--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    p.add_argument("-j", "--workers", default=4, type=int, metavar="N", help="data loading workers")
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
    p.add_argument("--arch", "-a", metavar="ARCH", default="resnet20",
                   help="model architecture: " + " | ".join(MODEL_NAMES))
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


def build_model(args, num_classes):
    """The official dispatch by architecture name (suffix ``resnext`` / ``wrn`` / otherwise ResNet-like)."""
    if "resnext" in args.arch:
        kw = dict(cardinality=args.cardinality, num_classes=num_classes, depth=args.depth,
                  widen_factor=args.widen_factor, dropRate=args.drop)
    elif "wrn" in args.arch:
        kw = dict(num_classes=num_classes, depth=args.depth, widen_factor=args.widen_factor, dropRate=args.drop)
    else:
        kw = dict(num_classes=num_classes, depth=args.depth, block_name=args.block_name)
    return dianet.create_model(args.arch, **kw)


# constructor keyword -> cifar.py flag (the inverse of build_model)
_VARIANT_FLAGS = {"depth": "--depth", "block_name": "--block-name", "cardinality": "--cardinality",
                  "widen_factor": "--widen-factor", "dropRate": "--drop"}


def variant_args(name):
    """The ``-a`` / model flags that make :func:`build_model` build the named variant ``name`` (from
    ``dianet.get_variant``), e.g. ``dia_resnet164`` -> ``-a dia_resnet --depth 164 --block-name bottleneck``."""
    variant = dianet.get_variant(name)
    unknown = sorted(set(variant.kwargs) - set(_VARIANT_FLAGS))
    if unknown:
        raise ValueError(f"variant {name!r} sets {unknown}, which cifar.py has no flag for")
    argv = ["-a", variant.model]
    for key, value in variant.kwargs.items():
        argv += [_VARIANT_FLAGS[key], str(value)]
    return argv


def lr_at(args, epoch, first_epoch=0):
    """The official step rule: starting from ``--lr`` at ``first_epoch``, lr is multiplied by gamma at the
    start of every epoch listed in ``--schedule`` (a milestone listed twice counts once, as officially).

    ``first_epoch`` is ``--start-epoch`` for a fresh run (as officially: lr starts at ``--lr`` there) and 0 for
    a resumed run: after ``--resume`` the lr follows the schedule from epoch 0, so a resumed run trains with
    the lr of the uninterrupted run (officially it keeps the checkpoint optimizer's lr until the next
    milestone, then jumps to ``--lr * gamma``, and logs ``--lr``).
    """
    return args.lr * args.gamma ** sum(first_epoch <= m <= epoch for m in set(args.schedule))


def _loaders(args, env, root, dataset):
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


def main(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.arch not in MODEL_NAMES:
        parser.error(f"unknown architecture -a {args.arch!r}; choose one of: {', '.join(MODEL_NAMES)}")
    env = D.init_distributed(args.local_rank, device=args.device)
    log = setup_logging(rank=env.rank)

    resume_state = ckpt.load_checkpoint(args.resume) if args.resume else None
    if args.manualSeed is None:
        saved = (resume_state or {}).get("seed")
        args.manualSeed = saved if saved is not None else random.randint(1, 10000)
        if env.distributed:  # every rank must shuffle and augment alike
            args.manualSeed = D.all_gather_object(args.manualSeed)[0]
    ckpt.seed_everything(args.manualSeed)

    dataset, root = args.dataset, args.data_root
    if args.demo:
        if env.is_main:
            cdata.build_demo_cifar(args.data_root)
        D.barrier()
        root, dataset = cdata.build_demo_cifar(args.data_root), "cifar10"
    num_classes = 10 if dataset == "cifar10" else 100
    log(f"==> Preparing dataset {'digits demo (CIFAR-10 format)' if args.demo else dataset} from {root}")
    train_set, sampler, train_loader, test_loader = _loaders(args, env, root, dataset)

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
    title = "cifar-10-" + args.arch
    best_acc, start_epoch = 0.0, args.start_epoch
    if resume_state is not None:
        log("==> Resuming from checkpoint..")
        best_acc = float(resume_state.get("best_acc", 0.0))
        start_epoch = int(resume_state["epoch"])
        if "optimizer" in resume_state:
            optimizer.load_state_dict(resume_state["optimizer"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        ckpt.set_rng_state(resume_state.get("rng_state"))
    resumed = resume_state is not None
    if args.evaluate:  # evaluation only: the training logs and checkpoints are left as they are
        log("\nEvaluation only")
        res = engine.evaluate(model, test_loader, criterion, env, amp, args.channels_last)
        log(" Test Loss:  %.8f, Test Acc:  %.2f" % (res["loss"], res["top1"]))
        return res

    if env.is_main:
        os.makedirs(args.checkpoint, exist_ok=True)
    logger = OfficialLogger(os.path.join(args.checkpoint, "log.txt"), title=title, resume=resumed,
                            keep_rows=start_epoch if resumed else None)
    logger.set_names(["Learning Rate", "Train Loss", "Valid Loss", "Train Acc.", "Valid Acc."])
    jsonl = JsonlLogger(os.path.join(args.checkpoint, "log.jsonl"), resume=resumed,
                        keep_rows=start_epoch if resumed else None)
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
            last = os.path.join(args.checkpoint, "checkpoint.pth.tar")
            raise SystemExit(f"error: {err}\nlast good checkpoint: "
                             f"{last if os.path.isfile(last) else '(none written yet)'}")
        te = engine.evaluate(model, test_loader, criterion, env, amp, args.channels_last)
        is_best = te["top1"] > best_acc
        best_acc = max(te["top1"], best_acc)
        if env.is_main:
            state = {
                "epoch": epoch + 1,
                "state_dict": {"module." + k: v for k, v in bare.state_dict().items()},
                "acc": te["top1"],
                "best_acc": best_acc,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng_state": ckpt.get_rng_state(),
                "seed": args.manualSeed,
                "arch": args.arch,
                "args": vars(args),
            }
            ckpt.save_official(state, is_best, args.checkpoint)
            if epoch == 50:
                ckpt.save_checkpoint(state, os.path.join(args.checkpoint, "checkpoint_50.pth.tar"))
            logger.append([lr, tr["loss"], te["loss"], tr["top1"], te["top1"]])
            record = {"epoch": epoch + 1, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
                      "train_top5": tr["top5"], "test_loss": te["loss"], "test_top1": te["top1"],
                      "test_top5": te["top5"], "best_acc": best_acc}
            jsonl.log(record)
            tb.scalars({k: v for k, v in record.items() if k != "epoch"}, epoch + 1)
        D.barrier()
    logger.close()
    tb.close()
    log("Best acc:")
    log(best_acc)
    return {"best_acc": best_acc}


def cli(argv=None):
    try:
        main(argv)
    except (cdata.DatasetNotFoundError, cdata.DataFileError, ckpt.CheckpointMismatchError, UnknownModelError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        D.cleanup()


if __name__ == "__main__":
    cli()
