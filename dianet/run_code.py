"""Launch the paper's four CIFAR-100 recipes with ``dianet/cifar.py`` (the official ``run_code.py``).

    python dianet/run_code.py                       # the ResNet-164 recipe (the one the official file runs)
    python dianet/run_code.py --recipe all --dry-run
    python dianet/run_code.py --recipe wrn52_4 -- --amp bf16 --channels-last

Arguments after ``--`` are appended to every command (e.g. ``--data-root``, speed flags).
"""
import argparse
import os
import shlex
import subprocess
import sys

RECIPES = {
    "resnet164": "-a dia_resnet --train-batch 128 --dataset cifar100 --depth 164 --block-name bottleneck "
                 "--epochs 180 --schedule 60 120 --gamma 0.1 --wd 1e-4 "
                 "--checkpoint checkpoints/cifar100/resnet-164-dia-rate4",
    "preresnet164": "-a dia_preresnet --train-batch 128 --dataset cifar100 --depth 164 --block-name bottleneck "
                    "--epochs 164 --schedule 81 122 --gamma 0.1 --wd 1e-4 "
                    "--checkpoint checkpoints/cifar100/preresnet-164-dia-rate4",
    "wrn52_4": "-a dia_wrn --dataset cifar100 --lr 0.1 --depth 52 --widen-factor 4 --drop 0.3 --epochs 200 "
               "--schedule 80 120 160 --wd 5e-4 --gamma 0.2 --checkpoint checkpoints/cifar100/WRN-52-4-drop-dia-rate4",
    "resnext101": "-a dia_resnext --dataset cifar100 --depth 101 --cardinality 8 --widen-factor 4 "
                  "--checkpoint checkpoints/cifar100/resnext-8x32d-101-dia-rate4 --schedule 150 225 --wd 5e-4 "
                  "--gamma 0.1",
}

CIFAR_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar.py")


def commands(recipe, extra=()):
    names = list(RECIPES) if recipe == "all" else [recipe]
    return [[sys.executable, CIFAR_PY] + shlex.split(RECIPES[n]) + list(extra) for n in names]


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="resnet164", choices=sorted(RECIPES) + ["all"])
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    args = p.parse_args(argv)
    for cmd in commands(args.recipe, extra):
        print(" ".join(shlex.quote(c) for c in cmd), flush=True)
        if not args.dry_run:
            rc = subprocess.call(cmd)
            if rc:
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
