# COCO 2017, 1x schedule (12 epochs, SGD lr 0.02 momentum 0.9 wd 1e-4, linear warmup 500 iterations,
# lr x0.1 after epochs 8 and 11), batch 16 (8 GPUs x 2 images).
_base_ = [
    './_base_/models/faster_rcnn_r50rlaeca_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
