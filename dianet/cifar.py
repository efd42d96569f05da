"""Train / evaluate DIANet on CIFAR-10/100 — the official ``cifar.py`` flags and defaults, over ``common``.

    python dianet/cifar.py -a dia_resnet --train-batch 128 --dataset cifar100 --depth 164 \
        --block-name bottleneck --epochs 180 --schedule 60 120 --gamma 0.1 --wd 1e-4 \
        --checkpoint checkpoints/cifar100/resnet-164-dia-rate4

The script itself is ``common.train.cifar`` (shared with DLA's ``cifar.py``); this file adds DIANet's model
dispatch. Additions to the official flags: ``--data-root`` (default ``datasets``), ``--demo`` (the bundled
digits set), ``--trust-checkpoint``, mixed precision / channels_last / compile / grad clipping / sync-BN
(``common.engine.add_engine_args``), and multi-process training with torchrun or
``python -m torch.distributed.launch``.
Fixed official defects: runs on CPU; lr after ``--resume`` follows the schedule; resume restores RNG and data
order so a resumed run reproduces the uninterrupted one; accuracy works on modern torch.
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dianet  # noqa: E402
from common.train import cifar as skeleton  # noqa: E402

MODEL_NAMES = dianet.list_models()


def get_parser():
    return skeleton.get_parser("PyTorch CIFAR10/100 Training (DIANet)", MODEL_NAMES)


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


def official_copies(epoch):
    """The official script also keeps the checkpoint written after epoch 50 (0-based) as ``checkpoint_50.pth.tar``."""
    return ["checkpoint_50.pth.tar"] if epoch == 50 else []


def main(argv=None):
    return skeleton.run(get_parser().parse_args(argv), build_model, MODEL_NAMES, copies=official_copies)


def cli(argv=None):
    skeleton.cli(main, argv)


if __name__ == "__main__":
    cli()
