#!/usr/bin/env bash
# DAC-DETR ResNet-50, 24 epochs (lr drop after epoch 20). Extra flags (e.g. --coco_path) are passed through.
. "$(dirname "$0")/_recipe.sh"
dacdetr_run output/r50_deformplus_cdn_ice/24eps/results/ --epochs 24 --lr_drop 20 -- "$@"
