#!/usr/bin/env bash
# DAC-DETR Swin-L (384, IN-22k), 24 epochs (lr drop after epoch 20). Extra flags (e.g. --coco_path) are passed through.
. "$(dirname "$0")/_recipe.sh"
dacdetr_run output/swin_deformplus_cdn_ice/24eps/results/ --epochs 24 --lr_drop 20 --backbone swin_large_window12 --pretrained_backbone_path ./initmodel/swin_large_patch4_window12_384_22k.pth --drop_path_rate 0.5 --weight_decay 0.05 -- "$@"
