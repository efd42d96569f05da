#!/usr/bin/env bash
# DAC-DETR Swin-L (384, IN-22k), 12 epochs (lr drop after epoch 11). Extra flags (e.g. --coco_path) are passed through.
. "$(dirname "$0")/_recipe.sh"
dacdetr_run output/swin_deformplus_cdn_ice/12eps/results/ --epochs 12 --lr_drop 11 --backbone swin_large_window12 --pretrained_backbone_path ./initmodel/swin_large_patch4_window12_384_22k.pth -- "$@"
