#!/usr/bin/env bash
# Install layerzoo into .venv and train a DIANet on the bundled digits demo set (CIFAR-10 format) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python dianet/cifar.py -a dia_resnet --depth 20 --block-name bottleneck --demo \
  --epochs 14 --schedule 9 12 --train-batch 64 --workers 0 --manualSeed 1 -c checkpoints/demo-dia-resnet20 "$@"
