# COCO 2017, 1x schedule with mmdet's RetinaNet learning rate (SGD lr 0.01), batch 16 (8 GPUs x 2 images).
_base_ = [
    './_base_/models/retinanet_r50rla_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0001))
