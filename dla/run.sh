#!/usr/bin/env bash
# The official DLA commands (cifar/run.sh, the README's CIFAR command, imagenet/run.sh), paths expanded.
#
#   bash dla/run.sh [cifar|readme|imagenet|all]     (default: cifar, the official cifar/run.sh)
#
#   cifar     dla_b, depth 20, CIFAR-100 (official cifar/run.sh; its folder said resnet-110)
#   readme    dla_b, depth 110, CIFAR-100 (the README command; its folder said dla-l-110)
#   imagenet  resnet50_dla_l on ImageNet, 100 epochs, 3 warm-up epochs (official imagenet/run.sh)
#
# Environment: DATA_ROOT (CIFAR root, default datasets), IMAGENET (ImageFolder root, default
# ~/workspace/imagenet), NPROC (processes per node through torchrun, default 1), PYTHON (default python),
# DRY_RUN=1 (print the commands only). Without the data it prints what to put where and the --demo command.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
DATA_ROOT=${DATA_ROOT:-datasets}
IMAGENET=${IMAGENET:-$HOME/workspace/imagenet}
NPROC=${NPROC:-1}
what=${1:-cifar}

launch() {
    if [ "$NPROC" -gt 1 ]; then
        echo "$PYTHON -m torch.distributed.run --standalone --nproc_per_node $NPROC"
    else
        echo "$PYTHON"
    fi
}

cifar_cmd() {  # depth folder
    echo "$(launch) dla/cifar.py -a dla_b --train-batch 128 --dataset cifar100 --depth $1 --block-name bottleneck" \
         "--lr 0.1 --epochs 180 --schedule 100 150 --drop-path 0.2 --gamma 0.1 --wd 1e-4" \
         "--data-root $DATA_ROOT --checkpoint checkpoints/cifar100/resnet-$1/dla-b-$1"
}

imagenet_cmd() {
    echo "$(launch) dla/train.py $IMAGENET -a resnet50_dla_l -b 256 --epochs 100 --warmup-epochs 3" \
         "--world-size 1 --rank 0 --workers 10"
}

need_cifar() {
    if [ -z "${DRY_RUN:-}" ] && [ ! -f "$DATA_ROOT/cifar-100-python/train" ]; then
        echo "dla/run.sh: CIFAR-100 not found: put the python version (cifar-100-python/ with train, test, meta) at" \
             "$DATA_ROOT/cifar-100-python/ (or set DATA_ROOT), or run the demo on the bundled digits instead:" \
             "python dla/cifar.py -a dla_l --depth 20 --block-name bottleneck --demo --epochs 5 --workers 0" \
             "-c checkpoints/demo-dla-l-20" >&2
        exit 2
    fi
}

need_imagenet() {
    if [ -z "${DRY_RUN:-}" ] && { [ ! -d "$IMAGENET/train" ] || [ ! -d "$IMAGENET/val" ]; }; then
        echo "dla/run.sh: ImageNet not found: put it at $IMAGENET/train/<class>/*.JPEG and" \
             "$IMAGENET/val/<class>/*.JPEG (or set IMAGENET), or run the demo on the bundled digits instead:" \
             "python dla/train.py --demo -a resnet50_dla_l --img-size 64 -b 32 -j 0 --epochs 2" >&2
        exit 2
    fi
}

run() {
    echo "+ $*"
    if [ -z "${DRY_RUN:-}" ]; then
        eval "$*"
    fi
}

case "$what" in
    cifar) need_cifar; run "$(cifar_cmd 20)" ;;
    readme) need_cifar; run "$(cifar_cmd 110)" ;;
    imagenet) need_imagenet; run "$(imagenet_cmd)" ;;
    all) need_cifar; need_imagenet; run "$(cifar_cmd 20)"; run "$(cifar_cmd 110)"; run "$(imagenet_cmd)" ;;
    *) echo "dla/run.sh: unknown recipe '$what'; choose one of: cifar, readme, imagenet, all" >&2; exit 2 ;;
esac
