#!/usr/bin/env bash
# DAC-DETR ResNet-50, 24 epochs (lr drop after epoch 20). Extra flags (e.g. --coco_path) are passed through.
set -x

EXP_DIR=output/r50_deformplus_cdn_ice/24eps/results/
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
    ${PY_ARGS}
