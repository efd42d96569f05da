# dynamic DWNet-B: the DWNet-T config below (_base_), with this backbone.
_base_ = './cascade_mask_rcnn_dwnet_tiny_patch4_window7_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py'

model = dict(
    backbone=dict(embed_dim=128, depths=[2, 2, 18, 2], drop_path_rate=0.3, dynamic=True),
    neck=dict(in_channels=[128, 256, 512, 1024]))
