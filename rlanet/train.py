"""Train / evaluate RLA-Net on ImageNet — the official ``train.py`` (a fork of the pytorch/examples ImageNet
script) with its flags and defaults, over ``common``.

    python rlanet/train.py -a rla_resnet50 -b 256 --multiprocessing-distributed --world-size 1 --rank 0 /data/imagenet
    python rlanet/train.py -a rla_resnet50 -b 256 --multiprocessing-distributed --world-size 1 --rank 0 \
        --resume work_dirs/rla_resnet50_/checkpoint.pth.tar /data/imagenet           # continue after the last epoch
    python rlanet/train.py -a rla_resnet50 -b 32 --resume work_dirs/rla_resnet50_/model_best.pth.tar -e /data/imagenet
    python rlanet/train.py -a dsrla_mobilenetv2 --demo --image-size 32 -j 0 -b 64 --epochs 1   # CPU, bundled digits
    torchrun --nproc_per_node 2 rlanet/train.py -a rla_resnet50 /data/imagenet         # torchrun / slurm/launch.py

Recipe (official): SGD(momentum 0.9, weight decay 1e-4 on every parameter, BN and biases included), lr
``0.1 * 0.1 ** (epoch // 30)`` over 120 epochs, plain cross-entropy, RandomResizedCrop(224) + flip for training,
Resize(256) + CenterCrop(224) for validation. ``train_light.py`` is this script with the MobileNetV2 recipe.

Output (official layout): ``{--work-dir}/{arch}_{--action}/`` holds ``checkpoint.pth.tar`` (every epoch; keys
``epoch`` (the next epoch), ``state_dict`` (``module.``-prefixed), ``best_acc1``, ``optimizer``, plus ``arch``,
``seed``, ``rng_state``, ``scaler``, ``args``), ``model_best.pth.tar`` (a copy at each best val Acc@1), the
``last_checkpoint`` pointer (what ``slurm/launch.py`` resumes from), ``config.yaml`` (the resolved flags), the
curve logs ``loss_plot.txt`` (train
loss), ``train_acc1.txt``, ``train_acc5.txt``, ``val_acc1.txt``, ``val_acc5.txt`` (lines ``"{epoch} {value}"``,
epoch counted from 0), ``log.jsonl`` (one record per epoch) and, at the end, the three PNGs of
``eval_visual.py``.

Additions to the official flags: ``--demo`` (the bundled digits ImageFolder, built under ``DIR`` or
``datasets``), ``--image-size`` / ``--resize`` (crop and resize sizes, for small CPU runs), ``--nprocs``
(processes per node for ``--multiprocessing-distributed``; default: the GPUs, 1 on a CPU-only node),
``--trust-checkpoint``, and the speed flags of ``common.engine.add_engine_args`` (``--amp``, ``--channels-last``,
``--compile``, ``--clip-grad``, ``--sync-bn``, ``--device``).

Kept from the official script: the flags, defaults and output names; the progress lines are
``common.engine``'s (officially ``Epoch: [e][i/N] ...``), the end of validation prints `` * Acc@1 x Acc@5 y``.

Fixed official defects:

* the ``*.txt`` curve logs are written by rank 0 only (officially every rank appends, racing), as plain numbers
  (officially ``str()`` of a CUDA tensor, ``tensor(61.2, device='cuda:0')``, which the official readers then
  cannot parse for a CPU run); a resumed run first drops the lines of epochs it trains again;
* ``best_acc1`` is stored as a float (officially a CUDA tensor inside the checkpoint);
* runs on CPU (gloo processes with ``--multiprocessing-distributed``); ``target.cuda()`` is not hard-coded;
* under torchrun / ``slurm/launch.py`` (``WORLD_SIZE`` set) ``--multiprocessing-distributed`` does not spawn
  again: each launched process is one rank;
* validation is sharded over the processes and summed exactly (officially every rank evaluates the whole set);
* ``--resume`` reads the file safely (``weights_only``; ``--trust-checkpoint`` for a trusted file), restores the
  RNG state, the seed and the data order, so a resumed run continues exactly where it stopped; a missing or
  foreign checkpoint stops with one message (officially: a missing file is ignored and training starts anew);
* the run is always seeded (a random seed is drawn and saved when ``--seed`` is not given) so the data order
  is reproducible; ``--seed`` still sets ``cudnn.deterministic`` as officially;
* the printed LR is the optimizer's (officially recomputed), and ``--rla`` is honoured by every RLA builder;
* ``-pre`` uses torchvision's ``weights=`` API (``pretrained=True`` is deprecated);
* ``num_classes`` follows the data set (officially fixed at 1000), so ``--demo`` trains a 10-class head.
"""
import argparse
import math
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import rlanet  # noqa: E402
from common import checkpoint as ckpt  # noqa: E402
from common import data as cdata  # noqa: E402
from common import distributed as D  # noqa: E402
from common import engine  # noqa: E402
from common.config import dump_run_config  # noqa: E402
from common.logging import JsonlLogger, setup_logging  # noqa: E402
from common.train import recipe  # noqa: E402
from common.train.cli import cli, nonfinite_exit  # noqa: E402

__all__ = ["MODEL_NAMES", "CURVE_FILES", "RECIPES", "get_parser", "lr_at", "checkpointer", "CurveLogs",
           "build_model", "main_worker", "main"]

MODEL_NAMES = [v.name for v in rlanet.variants()]

# the official curve logs: file name -> key of the epoch record
CURVE_FILES = (("loss_plot.txt", "train_loss"), ("train_acc1.txt", "train_top1"), ("train_acc5.txt", "train_top5"),
               ("val_acc1.txt", "test_top1"), ("val_acc5.txt", "test_top5"))

# the two official recipes: defaults of the flags that differ, and the per-epoch LR rule
RECIPES = {
    "train": dict(description="PyTorch ImageNet Training (RLA-Net)", arch="rla_resnet50", workers=16, epochs=120,
                  batch_size=256, lr=0.1, weight_decay=1e-4, print_freq=10, world_size=-1, dist_backend="nccl",
                  spawn_flags=True, decay_epochs=30, decay_rate=0.1),
    # train_light.py's official default arch 'rla_mobilenet_k6' is not a registered name; the paper's
    # RLA-MobileNetV2 (the README's released model) is dsrla_mobilenetv2
    "train_light": dict(description="PyTorch ImageNet Training (RLA-Net, MobileNetV2 recipe)",
                        arch="dsrla_mobilenetv2", workers=12, epochs=400, batch_size=96, lr=0.045,
                        weight_decay=4e-5, print_freq=50, world_size=1, dist_backend="gloo", spawn_flags=False,
                        decay_epochs=1, decay_rate=0.98),
}


def get_parser(kind="train"):
    """The official flags and defaults of ``train.py`` (``kind='train'``) or ``train_light.py``
    (``'train_light'``: no ``--rank`` / ``--multiprocessing-distributed``), plus the additions listed above."""
    r = RECIPES[kind]
    p = argparse.ArgumentParser(description=r["description"], conflict_handler="resolve")
    engine.add_engine_args(p)  # the speed flags; the official -p/--print-freq below replaces its --print-freq
    p.add_argument("data", metavar="DIR", nargs="?", default=None,
                   help="path to dataset (DIR/train, DIR/val); with --demo the folder to build the demo set in "
                        "(default: datasets)")
    p.add_argument("-a", "--arch", metavar="ARCH", default=r["arch"], choices=MODEL_NAMES,
                   help="model architecture: " + " | ".join(MODEL_NAMES) + f" (default: {r['arch']})")
    p.add_argument("--work-dir", default="work_dirs", type=str, help="the dir to save logs and models")
    p.add_argument("-j", "--workers", default=r["workers"], type=int, metavar="N",
                   help=f"number of data loading workers (default: {r['workers']})")
    p.add_argument("--epochs", default=r["epochs"], type=int, metavar="N", help="number of total epochs to run")
    p.add_argument("--start-epoch", default=0, type=int, metavar="N",
                   help="manual epoch number (useful on restarts)")
    p.add_argument("-b", "--batch-size", default=r["batch_size"], type=int, metavar="N",
                   help="mini-batch size, the total of all processes of this node")
    p.add_argument("--lr", "--learning-rate", default=r["lr"], type=float, metavar="LR", dest="lr",
                   help="initial learning rate")
    p.add_argument("--momentum", default=0.9, type=float, metavar="M", help="momentum")
    p.add_argument("--wd", "--weight-decay", default=r["weight_decay"], type=float, metavar="W",
                   dest="weight_decay", help=f"weight decay (default: {r['weight_decay']:g})")
    p.add_argument("-p", "--print-freq", default=r["print_freq"], type=int, metavar="N", help="print frequency")
    p.add_argument("--resume", default="", type=str, metavar="PATH", help="path to latest checkpoint (default: none)")
    ckpt.add_trust_arg(p)
    p.add_argument("-e", "--evaluate", dest="evaluate", action="store_true", help="evaluate model on validation set")
    p.add_argument("-pre", "--pretrained_conv1", dest="pretrained_conv1", action="store_true",
                   help="copy (and freeze) the first conv of the torchvision ImageNet model")
    D.add_examples_dist_args(p, world_size=r["world_size"], dist_backend=r["dist_backend"],
                             spawn_flags=r["spawn_flags"])
    p.add_argument("--seed", default=None, type=int, help="seed for initializing training")
    p.add_argument("--rla", default=None, type=int, help="number of RLA channels k (default: the variant's, 32)")
    p.add_argument("--action", default="", type=str, help="suffix of the run folder {arch}_{action}")
    g = p.add_argument_group("additions")
    g.add_argument("--demo", action="store_true",
                   help="use the bundled demo ImageFolder (scikit-learn digits, 10 classes), built under DIR")
    g.add_argument("--image-size", default=224, type=int, help="crop size (default: 224; e.g. 32 for --demo on CPU)")
    g.add_argument("--resize", default=None, type=int,
                   help="validation resize of the shorter side (default: image-size * 256 / 224)")
    g.add_argument("--nprocs", default=None, type=int,
                   help="processes per node for --multiprocessing-distributed (default: the GPUs; 1 on CPU)")
    p.set_defaults(kind=kind)
    return p


def lr_at(args, epoch):
    """The official per-epoch rule: ``lr * 0.1 ** (epoch // 30)`` (train.py), ``0.045 * 0.98 ** epoch``
    (train_light.py)."""
    r = RECIPES[args.kind]
    return recipe.examples_lr(epoch, args.lr, decay_epochs=r["decay_epochs"], decay_rate=r["decay_rate"])


def run_dir(args):
    return os.path.join(args.work_dir, f"{args.arch}_{args.action}")


def checkpointer(folder):
    """The official file names and keys (``state_dict`` with ``module.`` prefixes, ``best_acc1``)."""
    return ckpt.TrainingCheckpointer(folder, filename="checkpoint.pth.tar", best_filename="model_best.pth.tar",
                                     keys={"model": "state_dict", "best_metric": "best_acc1", "rng": "rng_state"},
                                     model_prefix="module.")


class CurveLogs:
    """The official ``*.txt`` curve logs (``"{epoch} {value}"`` lines), written by the main process only, values
    as plain numbers. ``start_epoch`` drops the lines of epochs >= it (a resumed run trains them again)."""

    def __init__(self, folder, start_epoch=0, enabled=True):
        self.folder, self.enabled = folder, enabled
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        for name, _ in CURVE_FILES:
            path = os.path.join(folder, name)
            kept = []
            if start_epoch > 0 and os.path.isfile(path):
                with open(path) as f:
                    kept = [ln for ln in f.read().splitlines() if ln.strip() and _epoch_of(ln) < start_epoch]
            with open(path, "w") as f:
                f.write("".join(ln + "\n" for ln in kept))

    def append(self, epoch, record):
        if not self.enabled:
            return
        for name, key in CURVE_FILES:
            with open(os.path.join(self.folder, name), "a") as f:
                f.write(f"{epoch} {float(record[key])!r}\n")


def _epoch_of(line):
    try:
        return int(line.split()[0])
    except (ValueError, IndexError):
        return -1


class ModelArgError(ValueError):
    """A flag the chosen architecture does not take."""


def build_model(args, num_classes):
    kwargs = {"num_classes": num_classes}
    if args.rla is not None:
        kwargs["rla_channel"] = args.rla
    try:
        return rlanet.create_model(args.arch, **kwargs)
    except TypeError as err:
        if args.rla is not None and "rla_channel" in str(err):
            raise ModelArgError(f"-a {args.arch} has no RLA channels: drop --rla ({err})") from None
        raise


# torchvision ImageNet model whose first conv -pre copies (official choice per architecture family)
def _torchvision_source(arch):
    if "mobilenet" in arch:
        return "mobilenet_v2", "features.0.0.weight"
    for key, name in (("resnext101", "resnext101_32x8d"), ("resnext50", "resnext50_32x4d"), ("resnet152", "resnet152"),
                      ("resnet101", "resnet101"), ("resnet50", "resnet50")):
        if key in arch:
            return name, "conv1.weight"
    raise ModelArgError(f"-pre: no torchvision ImageNet model for -a {arch}")


def copy_pretrained_conv1(model, arch, log=print):
    """``-pre``: copy the torchvision ImageNet model's first conv into the model's and freeze it."""
    import torchvision

    name, key = _torchvision_source(arch)
    try:
        weight = torchvision.models.get_model(name, weights="DEFAULT").state_dict()[key]
    except Exception as err:  # no network / no cached weights
        raise SystemExit(f"error: -pre needs torchvision's ImageNet weights of {name} ({err})") from None
    first = model.get_submodule(rlanet.get_variant(arch).pretrained_cfg["first_conv"])
    with torch.no_grad():
        first.weight.copy_(weight)
    first.weight.requires_grad_(False)
    log(f"=> copied and froze the first conv of torchvision's {name}")


def _data_root(args, env):
    if not args.demo:
        if args.data is None:
            raise cdata.DatasetNotFoundError(
                "no dataset given: pass DIR (laid out as DIR/{train,val}/<class>/<image>.JPEG, ImageFolder) or "
                "--demo for the bundled digits ImageFolder")
        return args.data
    folder = args.data or "datasets"
    if env.is_main:
        cdata.build_demo_imagefolder(folder)
    D.barrier()
    return cdata.build_demo_imagefolder(folder)


def main_worker(env, args):
    log = setup_logging(rank=env.rank)
    resume = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint) if args.resume else None
    seed = D.agree_on_seed(args.seed, (resume or {}).get("seed"))
    ckpt.seed_everything(seed)
    if args.seed is not None and env.device.type == "cuda":
        torch.backends.cudnn.deterministic = True
    elif env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    root = _data_root(args, env)
    resize = args.resize or int(round(args.image_size * 256 / 224))
    train_set = cdata.SeededAugment(
        cdata.load_imagefolder(root, "train", cdata.imagenet_transforms(True, args.image_size, resize)), seed=seed)
    val_set = cdata.load_imagefolder(root, "val", cdata.imagenet_transforms(False, args.image_size, resize))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))  # processes of this node share -b and -j
    batch = max(1, args.batch_size // local)
    workers = int(math.ceil(args.workers / local))
    sampler = cdata.GlobalBatchSampler(len(train_set), batch * env.world_size, env.rank, env.world_size,
                                       shuffle=True, seed=seed)
    pin = env.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers, pin_memory=pin)
    val_loader = DataLoader(val_set, batch_size=batch, num_workers=workers, pin_memory=pin,
                            sampler=cdata.ShardSampler(len(val_set), env.rank, env.world_size))
    num_classes = len(train_set.dataset.classes)

    log(f"=> creating model '{args.arch}'")
    model = build_model(args, num_classes)
    if args.pretrained_conv1:
        copy_pretrained_conv1(model, args.arch, log)
    folder = run_dir(args)
    if resume is not None:
        log(f"=> loading checkpoint '{args.resume}'")
        ckpt.load_state_dict_strict(model, resume.get("state_dict", resume), source=f"checkpoint {args.resume}")
    model, bare = engine.prepare_model(model, args, env)
    criterion = recipe.build_criterion(False)  # plain cross-entropy, as officially
    optimizer = recipe.build_optimizer(bare, "momentum", args.lr, args.weight_decay, args.momentum,
                                       filter_bias_and_bn=False, no_weight_decay=())
    amp = engine.amp_from_args(args, env.device)
    scaler = amp.make_scaler()
    saver = checkpointer(folder)
    best_acc1, start_epoch = 0.0, args.start_epoch
    if resume is not None:
        saver.restore(resume, optimizer=optimizer if "optimizer" in resume else None, scaler=scaler,
                      rng="rng_state" in resume)
        start_epoch = int(resume.get("epoch", 0))
        best_acc1 = float(resume.get("best_acc1", 0.0))
        log(f"=> loaded checkpoint '{args.resume}' (epoch {start_epoch})")

    if args.evaluate:
        res = engine.evaluate(model, val_loader, torch.nn.CrossEntropyLoss(), env, amp, args.channels_last)
        log(" * Acc@1 {:.3f} Acc@5 {:.3f}".format(res["top1"], res["top5"]))
        return res

    if env.is_main:  # the resolved flags of a training run; -e leaves the folder alone
        dump_run_config(folder, args)
    curves = CurveLogs(folder, start_epoch, enabled=env.is_main)
    jsonl = JsonlLogger(os.path.join(folder, "log.jsonl"), resume=start_epoch > 0, keep_rows=start_epoch)
    for epoch in range(start_epoch, args.epochs):
        recipe.set_lr(optimizer, lr_at(args, epoch))
        lr = optimizer.param_groups[0]["lr"]
        log(f"Epoch: [{epoch}] LR {lr:.6g}")
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        try:
            tr = engine.train_one_epoch(model, train_loader, criterion, optimizer, env, amp, scaler, epoch,
                                        clip_grad=args.clip_grad, channels_last=args.channels_last,
                                        print_freq=args.print_freq, log=log)
        except engine.NonFiniteLossError as err:
            raise nonfinite_exit(err, saver.last()) from None
        te = engine.evaluate(model, val_loader, torch.nn.CrossEntropyLoss(), env, amp, args.channels_last)
        log(" * Acc@1 {:.3f} Acc@5 {:.3f}".format(te["top1"], te["top5"]))
        is_best = te["top1"] > best_acc1
        best_acc1 = max(te["top1"], best_acc1)
        if env.is_main:
            saver.save(model=bare, optimizer=optimizer, scaler=scaler, epoch=epoch + 1, best_metric=best_acc1,
                       is_best=is_best, extra={"arch": args.arch, "seed": seed, "args": vars(args)})
            record = {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "train_top1": tr["top1"],
                      "train_top5": tr["top5"], "test_loss": te["loss"], "test_top1": te["top1"],
                      "test_top5": te["top5"], "best_acc1": best_acc1}
            curves.append(epoch, record)
            jsonl.log(record)
        D.barrier()
    if env.is_main and start_epoch < args.epochs:
        from rlanet.eval_visual import plot_log_dir

        plot_log_dir(folder)
    return {"best_acc1": best_acc1}


def _precheck(args):
    """Bad input found before --multiprocessing-distributed spawns (one message here rather than one traceback
    per process): the data folders, the --resume file and whether it fits -a."""
    if not args.demo:
        if args.data is None:
            _data_root(args, D.DistEnv())
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(args.data, split)):
                cdata.load_imagefolder(args.data, split)
    if args.resume:
        state = ckpt.load_checkpoint(args.resume, trust=args.trust_checkpoint)
        if args.demo:
            num_classes = 10
        else:
            train_dir = os.path.join(args.data, "train")
            num_classes = sum(os.path.isdir(os.path.join(train_dir, d)) for d in os.listdir(train_dir))
        model = build_model(args, num_classes)
        report = ckpt.check_state_dict(model, ckpt.strip_module_prefix(state.get("state_dict", state)))
        if report:
            raise ckpt.CheckpointMismatchError(f"checkpoint {args.resume} does not match {args.arch}:\n{report}")


def main(argv=None, kind="train"):
    args = get_parser(kind).parse_args(argv)
    if getattr(args, "multiprocessing_distributed", False):
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            # torchrun / slurm/launch.py already started the processes: each is one of them, none spawns more
            args.multiprocessing_distributed = False
        else:
            _precheck(args)
    return D.launch_examples(main_worker, args, nprocs=args.nprocs, device=args.device)


def run_cli(argv=None, kind="train"):
    """``main`` with one ``error:`` line and exit status 2 for bad input (never a traceback)."""
    def go(a):
        try:
            main(a, kind)
        except (ModelArgError, ValueError) as err:
            if not isinstance(err, ModelArgError) and "--dist-url" not in str(err):
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    cli(go, argv)


if __name__ == "__main__":
    run_cli()
