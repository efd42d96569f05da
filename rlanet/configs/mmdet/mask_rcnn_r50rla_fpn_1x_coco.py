# COCO 2017 instances, 1x schedule (as faster_rcnn_r50rla_fpn_1x_coco.py).
_base_ = [
    './_base_/models/mask_rcnn_r50rla_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
