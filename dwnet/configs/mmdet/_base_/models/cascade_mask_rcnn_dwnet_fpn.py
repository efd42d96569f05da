# Cascade Mask R-CNN with the DWNet backbone (mmdetection 3.x): mmdet's cascade-mask-rcnn_r50_fpn.py with the
# backbone replaced. The backbone comes from layerzoo's plugin (pip install -e <layerzoo>).
# Without a checkpoint the backbone keeps its own init (the official configs' pretrained=None); pass the
# ImageNet checkpoint with --cfg-options model.backbone.pretrained=<dwnet_tiny_224.pth>.
_base_ = 'mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py'
custom_imports = dict(imports=['dwnet.mmdet'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='DWNet',
        embed_dim=96,
        depths=[2, 2, 6, 2],
        window_size=7,
        mlp_ratio=4.,
        drop_rate=0.,
        drop_path_rate=0.2,
        ape=False,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        use_checkpoint=False,
        dynamic=False),
    neck=dict(in_channels=[96, 192, 384, 768], out_channels=256, num_outs=5))
