#!/usr/bin/env bash
# D-DWNet-T: 1 node x 8 GPUs, batch 128 per GPU (1024), AMP O1.
# Train (default) or evaluate (MODE=eval RESUME=<checkpoint>); settings by environment variable, see _launch.sh.
#   DATA_PATH=/data/imagenet bash dwnet/scripts/run_dynamic_dwnet_tiny_patch4_window7_224.sh
#   DRY_RUN=1 bash dwnet/scripts/run_dynamic_dwnet_tiny_patch4_window7_224.sh          # print the command
CONFIG=dynamic_dwnet_tiny_patch4_window7_224
DEFAULT_NNODES=1 DEFAULT_BATCH=128 DEFAULT_ACCUM=0 DEFAULT_AMP=O1
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
