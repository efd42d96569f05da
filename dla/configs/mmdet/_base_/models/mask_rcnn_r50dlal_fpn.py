# Mask R-CNN R50-DLA-L FPN (mmdetection 3.x): mmdet's R50-FPN Mask R-CNN with the ResNet_dlal backbone.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['dla.mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNet_dlal',
        layers=[3, 4, 6, 3],
        frozen_stages=1,
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='./pretrained/r50_dla.pth.tar')),
    neck=dict(in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5))
