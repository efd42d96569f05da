#!/usr/bin/env bash
# DAC-DETR ResNet-50, 12 epochs (lr drop after epoch 11). Extra flags (e.g. --coco_path) are passed through.
. "$(dirname "$0")/_recipe.sh"
dacdetr_run output/r50_deformplus_cdn_ice/12eps/results/ --epochs 12 --lr_drop 11 -- "$@"
