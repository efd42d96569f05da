# Faster R-CNN ECA-R50-RLA FPN (mmdetection 3.x): mmdet's faster-rcnn_r50_fpn.py with the RLA_ResNet backbone.
# The backbone comes from layerzoo's plugin (pip install -e <layerzoo>); no file is copied into mmdetection.
_base_ = 'mmdet::_base_/models/faster-rcnn_r50_fpn.py'
custom_imports = dict(imports=['rlanet.mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='RLA_ResNet',
        layers=[3, 4, 6, 3],
        ECA=[5, 5, 5, 7],
        frozen_stages=1,
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='./pretrained/ecanet50_rla_2215.pth.tar')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
