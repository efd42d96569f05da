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
``val_acc5.txt``, one ``epoch value`` line per epoch (epoch counted from 0, as officially), ``log.jsonl``,
``config.yaml`` and, at the end, ``acc1_plot.png``, ``acc5_plot.png``, ``loss_plot.png`` (``eval_visual.py``'s).
Console: ``Epoch: [e][i/N]\tLR ..\tTime ..\tData ..\tLoss ..\tAcc@1 ..\tAcc@5 ..`` every ``-p`` batches (from
batch 0) and `` * Acc@1 x Acc@5 y Loss z`` after validation, as officially.

The loop, data, logs and checkpoints are the shared ImageNet script skeleton ``common.train.imagenet`` (also
RLA-Net's ``train.py``); this file holds the official flags, the model dispatch, the optimizer with ``--wd-la``
and the ``gen_lr`` rule. ``train_pro.py`` is this script with the label-smoothing / per-iteration recipe.

Launch modes (``common.distributed.launch_examples``): one process; ``--multiprocessing-distributed`` (one
process per GPU of this node, or ``--nprocs`` processes, one by default on a CPU-only node; ``--world-size``
nodes, ``--rank`` this node);
``torchrun`` / ``python -m torch.distributed.launch`` / SLURM; CPU processes use gloo. ``-b`` and ``-j`` are
totals over the processes of a node (each gets ``b / processes``), as officially.

Additions: ``--demo`` (the bundled digits ImageFolder, built under ``data``, default ``datasets``),
``--img-size`` (train crop; validation resizes to ``img_size / 0.875`` and crops ``img_size``),
``--steps-per-epoch`` (stop each epoch's training after that many batches: quick runs), ``--nprocs``,
``--trust-checkpoint``, the speed flags of ``common.engine.add_engine_args`` (``--amp``, ``--channels-last``,
``--compile``, ``--clip-grad``, ``--sync-bn``, ``--device``).

Fixed official defects: runs on CPU; the curve logs hold plain numbers (officially
``tensor(76.1, device='cuda:0')``), rank 0 alone writes them, and a resumed run continues them without duplicates; ``--resume`` loads safely
(``weights_only``; a checkpoint of another architecture is one message naming the keys) and restores the RNG and
data order; a bad ``-a``, missing data or a non-finite loss is one ``error:`` line (exit 2), never a traceback.
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dla  # noqa: E402
from common import engine  # noqa: E402
from common.registry import UnknownModelError  # noqa: E402
from common.train import imagenet as skeleton  # noqa: E402
from common.train import recipe  # noqa: E402
from common.train.cli import cli as run_cli  # noqa: E402
from common.train.imagenet import checkpointer, run_dir  # noqa: E402,F401

MODEL_NAMES = dla.list_models()
#: the official curve logs: file name -> key of the epoch record
CURVES = skeleton.EXAMPLES_CURVES + (("valloss_plot.txt", "test_loss"),)


def get_parser(description="PyTorch ImageNet Training (DLA)", arch="dla_50"):
    p = skeleton.parser(description)
    engine.add_engine_args(p)  # the speed flags; the official -p/--print-freq replaces its --print-freq
    g = skeleton.add_examples_args(p, arch=arch, workers=16, epochs=100, batch_size=256, lr=0.1, weight_decay=1e-4,
                                   print_freq=10)
    p.add_argument("--warmup-epochs", default=0, type=int, metavar="N", help="warm-up epochs")
    p.add_argument("--warmup-lr", default=0.0001, type=float, metavar="LR", help="lr of epoch 0 in the warm-up")
    p.add_argument("--wd-la", "--weight-decay-la", default=1e-4, type=float, metavar="W", dest="wd_la",
                   help="weight decay of the layer-attention parameters (names containing 'layer_atten')")
    p.add_argument("--drop", default=0.0, type=float, metavar="P", help="dropout before the classifier")
    p.add_argument("--drop-path", default=0.2, type=float, metavar="P",
                   help="stochastic depth rate of the layer-attention branches")
    g.add_argument("--img-size", default=224, type=int, help="train / validation crop (default 224)")
    g.add_argument("--steps-per-epoch", default=0, type=int, metavar="N",
                   help="stop each epoch's training after N batches (0: the whole set); validation is whole")
    return p


def build_optimizer(model, args):
    """SGD on every parameter with ``--wd``; names containing ``layer_atten`` with ``--wd-la`` when it differs."""
    overrides = [("*layer_atten*", {"weight_decay": args.wd_la})] if args.wd_la != args.weight_decay else []
    return recipe.build_optimizer(model, opt="momentum", lr=args.lr, weight_decay=args.weight_decay,
                                  momentum=args.momentum, filter_bias_and_bn=False, no_weight_decay=(),
                                  overrides=overrides)


class DLARecipe(skeleton.Recipe):
    """DLA ``train.py``: ``dla.create_model(arch, num_classes, drop_rate=--drop, drop_path=--drop-path)``, the
    ``--wd-la`` optimizer, the ``gen_lr`` epoch rule, validation loss in the logs, ``checkpoint{epoch}.pth.tar``
    copies every 30 epochs and at the best epochs after 91."""

    curve_files = CURVES
    summary_loss = True
    size_flags = ("img_size", None)

    def build_model(self, args, num_classes):
        return dla.create_model(args.arch, num_classes=num_classes, drop_rate=args.drop, drop_path=args.drop_path)

    def build_optimizer(self, model, args):
        return build_optimizer(model, args)

    def val_criterion(self, args, criterion):
        return criterion  # officially validated with the training criterion

    def epoch_lr(self, args, epoch):
        return recipe.examples_lr(epoch, args.lr, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr)

    def copies(self, epoch, is_best):
        return [f"checkpoint{epoch}.pth.tar"] if (epoch + 1) % 30 == 0 or (epoch > 91 and is_best) else []


def check_args(parser, args):
    """Bad input found before any process starts: one message."""
    if args.arch not in MODEL_NAMES:
        raise UnknownModelError(f"unknown architecture -a {args.arch!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if not args.demo and not args.data:
        parser.error("the dataset folder DIR is required (or use --demo)")


def main(argv=None, recipe_cls=DLARecipe, parser=None):
    parser = parser or get_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return skeleton.launch(args, recipe_cls())


def cli(argv=None):
    """``main``; bad input ends with one ``error:`` line and exit status 2."""
    run_cli(main, argv)


if __name__ == "__main__":
    cli()
