"""Train / evaluate the DLA CIFAR models — the official ``cifar/cifar.py`` flags and defaults, over ``common``.

    python dla/cifar.py -a dla_l --train-batch 128 --dataset cifar100 --depth 110 --block-name bottleneck \
        --lr 0.1 --epochs 180 --schedule 100 150 --drop-path 0.2 --gamma 0.1 --wd 1e-4 \
        --checkpoint checkpoints/cifar100/resnet-110/dla-l-110

    python dla/cifar.py -a dla_l --depth 20 --block-name bottleneck --demo     # no data needed (CPU)

The script itself is ``common.train.cifar`` (shared with DIANet's ``cifar.py``); this file adds DLA's model
dispatch and the ``--drop-path`` flag. ``-a`` is one of ``dia_resnet, dla_b, dla_l, ecanet, mrla_base,
mrla_light, resnet, senet``; as officially, architectures whose name ends in ``resnet`` get ``(num_classes,
depth, block_name)`` and the others also ``drop_path``. ``log.txt`` has the official columns (``Epoch`` first).
Additions to the official flags: ``--data-root`` (default ``datasets``), ``--demo`` (the bundled digits set),
``--trust-checkpoint``, mixed precision / channels_last / compile / grad clipping / sync-BN
(``common.engine.add_engine_args``), and multi-process training with torchrun or
``python -m torch.distributed.launch``.

Fixed official defects: a checkpoint is written after every epoch (officially only when ``epoch % 10 == 0``,
so up to nine epochs were lost, and ``model_best.pth.tar`` missed most best epochs); every epoch is one row of
``log.txt`` (officially each row is written twice); runs on CPU (officially ``.cuda()`` everywhere); lr after
``--resume`` follows the schedule; resume restores RNG and data order so a resumed run reproduces the
uninterrupted one; a block name the model cannot be built with (``basicblock`` for the layer-attention models,
officially a NameError / ZeroDivisionError / shape error) or an unknown ``-a`` is one ``error:`` line (exit 2).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dla  # noqa: E402
from common.train import cifar as skeleton  # noqa: E402

#: the official choices: the lowercase callables of the official ``models.cifar``
MODEL_NAMES = sorted({row[1] for row in dla.CIFAR_VARIANTS})
#: log.txt columns of the official DLA script: ``Epoch`` then the shared ones
COLUMNS = (("Epoch", "epoch"),) + skeleton.OFFICIAL_COLUMNS


def get_parser():
    p = skeleton.get_parser("PyTorch CIFAR10/100 Training (DLA)", MODEL_NAMES, workers=8)
    p.add_argument("--drop-path", default=0.0, type=float, metavar="P",
                   help="stochastic depth rate of the layer-attention branches (archs not ending in 'resnet')")
    return p


def model_kwargs(args, num_classes):
    """The official dispatch: names ending in ``resnet`` get ``(num_classes, depth, block_name)``, the others
    also ``drop_path``."""
    kw = dict(num_classes=num_classes, depth=args.depth, block_name=args.block_name)
    if not args.arch.endswith("resnet"):
        kw["drop_path"] = args.drop_path
    return kw


def build_model(args, num_classes):
    try:
        return dla.create_model(args.arch, **model_kwargs(args, num_classes))
    except ValueError as err:  # a depth / block name the model cannot be built with
        print(f"error: {err} (flags --depth / --block-name)", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv=None):
    return skeleton.run(get_parser().parse_args(argv), build_model, MODEL_NAMES, columns=COLUMNS)


def cli(argv=None):
    skeleton.cli(main, argv)


if __name__ == "__main__":
    cli()
