#!/usr/bin/env bash
# DAC-DETR Swin-L (384, IN-22k), 24 epochs (lr drop after epoch 20). Extra flags (e.g. --coco_path) are passed through.
set -x

EXP_DIR=output/swin_deformplus_cdn_ice/24eps/results/
PY_ARGS=${@:1}

${PYTHON:-python3} -u -m dacdetr.main \
    --output_dir ${EXP_DIR} \
    --with_box_refine \
    --two_stage \
    --dim_feedforward 2048 \
    --num_queries_one2one 900 \
    --epochs 24 \
    --lr_drop 20 \
    --dropout 0.0 \
    --mixed_selection \
    --look_forward_twice \
    --backbone swin_large_window12 \
    --pretrained_backbone_path './initmodel/swin_large_patch4_window12_384_22k.pth' \
    --drop_path_rate 0.5 \
    --weight_decay 0.05 \
    ${PY_ARGS}
