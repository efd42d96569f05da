#!/usr/bin/env bash
# DWNet-B: 2 nodes x 8 GPUs, batch 64 per GPU x 2 accumulation steps (2048), AMP O1.
# Train (default) or evaluate (MODE=eval RESUME=<checkpoint>); settings by environment variable, see _launch.sh.
#   DATA_PATH=/data/imagenet bash dwnet/scripts/run_dwnet_base_patch4_window7_224.sh
#   DRY_RUN=1 bash dwnet/scripts/run_dwnet_base_patch4_window7_224.sh          # print the command
CONFIG=dwnet_base_patch4_window7_224
DEFAULT_NNODES=2 DEFAULT_BATCH=64 DEFAULT_ACCUM=2 DEFAULT_AMP=O1
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
