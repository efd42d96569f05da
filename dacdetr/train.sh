#!/usr/bin/env bash
# 8-GPU training of the R50 12-epoch model (run from the repository root).
GPUS_PER_NODE=8 ./dacdetr/tools/run_dist_launch.sh 8 ./dacdetr/configs/r50_deformplus_cdn_ice_ep12.sh --coco_path ./data/coco
