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

Kept from the official script: the flags, defaults and output names, the progress lines
``Epoch: [e][i/N]\tLR ..\tTime ..\tData ..\tLoss ..\tAcc@1 ..\tAcc@5 ..`` every ``-p`` batches (from batch 0) and
`` * Acc@1 x Acc@5 y`` at the end of validation. The loop, data, logs and checkpoints are the shared ImageNet
script skeleton ``common.train.imagenet`` (also DLA's ``train.py``); this file holds the flags, the model
dispatch (``--rla``, ``-pre``) and the two recipes.

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
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import rlanet  # noqa: E402
from common import engine  # noqa: E402
from common.train import imagenet as skeleton  # noqa: E402
from common.train import recipe  # noqa: E402
from common.train.cli import cli  # noqa: E402
from common.train.imagenet import checkpointer, run_dir  # noqa: E402,F401

__all__ = ["MODEL_NAMES", "CURVE_FILES", "RECIPES", "get_parser", "lr_at", "checkpointer", "run_dir",
           "build_model", "copy_pretrained_conv1", "RLARecipe", "main", "run_cli"]

MODEL_NAMES = [v.name for v in rlanet.variants()]

# the official curve logs: file name -> key of the epoch record
CURVE_FILES = skeleton.EXAMPLES_CURVES

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
_FLAG_DEFAULTS = ("arch", "workers", "epochs", "batch_size", "lr", "weight_decay", "print_freq", "world_size",
                  "dist_backend", "spawn_flags")


def get_parser(kind="train"):
    """The official flags and defaults of ``train.py`` (``kind='train'``) or ``train_light.py``
    (``'train_light'``: no ``--rank`` / ``--multiprocessing-distributed``), plus the additions listed above."""
    r = RECIPES[kind]
    p = skeleton.parser(r["description"])
    engine.add_engine_args(p)  # the speed flags; the official -p/--print-freq replaces its --print-freq
    g = skeleton.add_examples_args(p, choices=MODEL_NAMES, **{k: r[k] for k in _FLAG_DEFAULTS})
    p.add_argument("-pre", "--pretrained_conv1", dest="pretrained_conv1", action="store_true",
                   help="copy (and freeze) the first conv of the torchvision ImageNet model")
    p.add_argument("--rla", default=None, type=int, help="number of RLA channels k (default: the variant's, 32)")
    g.add_argument("--image-size", default=224, type=int, help="crop size (default: 224; e.g. 32 for --demo on CPU)")
    g.add_argument("--resize", default=None, type=int,
                   help="validation resize of the shorter side (default: image-size * 256 / 224)")
    p.set_defaults(kind=kind)
    return p


def lr_at(args, epoch):
    """The official per-epoch rule: ``lr * 0.1 ** (epoch // 30)`` (train.py), ``0.045 * 0.98 ** epoch``
    (train_light.py)."""
    r = RECIPES[args.kind]
    return recipe.examples_lr(epoch, args.lr, decay_epochs=r["decay_epochs"], decay_rate=r["decay_rate"])


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


class RLARecipe(skeleton.Recipe):
    """RLA-Net's differences from the plain pytorch/examples script: the model dispatch, ``-pre`` and the
    per-epoch LR rule of ``train.py`` / ``train_light.py`` (SGD on every parameter and plain cross-entropy are
    the skeleton's defaults)."""

    def build_model(self, args, num_classes):
        return build_model(args, num_classes)

    def after_model(self, model, args, log):
        if args.pretrained_conv1:
            copy_pretrained_conv1(model, args.arch, log)

    def epoch_lr(self, args, epoch):
        return lr_at(args, epoch)


def main(argv=None, kind="train"):
    return skeleton.launch(get_parser(kind).parse_args(argv), RLARecipe())


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
