#!/usr/bin/env bash
# Small CPU run of the same DAC-DETR recipe (two-stage, box refine, mixed selection, look forward
# twice, CDN + one-to-many C-decoder + IA-BCE) on the offline digits demo set:
#   python -m dacdetr.datasets.demo --out datasets/coco_demo
#   ./dacdetr/configs/demo_r50.sh
# Differences from the paper config, all for speed on a CPU: images at 0.16x the COCO sizes
# (shorter side 77-128 px), 100 queries, 2 encoder + 2 decoder layers, d_model 128, FFN 512,
# and a frozen ResNet-50 (--lr_backbone 0; without ./initmodel/resnet50-19c8e357.pth it keeps
# its random initialisation). Extra flags are passed through (e.g. --epochs, --resume).
set -x

EXP_DIR=output/demo_r50/
PY_ARGS=${@:1}

${PYTHON:-python3} -u -m dacdetr.main \
    --output_dir ${EXP_DIR} \
    --coco_path datasets/coco_demo \
    --device cpu \
    --with_box_refine \
    --two_stage \
    --mixed_selection \
    --look_forward_twice \
    --dropout 0.0 \
    --input_scale 0.16 \
    --num_queries_one2one 100 \
    --enc_layers 2 \
    --dec_layers 2 \
    --hidden_dim 128 \
    --dim_feedforward 512 \
    --lr_backbone 0 \
    --batch_size 2 \
    --epochs 6 \
    --lr_drop 5 \
    --num_workers 1 \
    --print_freq 25 \
    ${PY_ARGS}
