#!/usr/bin/env bash
# 8-GPU COCO val evaluation of a trained checkpoint (prints the 12-number COCO table).
GPUS_PER_NODE=8 ./dacdetr/tools/run_dist_launch.sh 8 ./dacdetr/configs/r50_deformplus_cdn_ice_ep12.sh --coco_path ./data/coco --eval --resume './output/checkpoint0011.pth'
