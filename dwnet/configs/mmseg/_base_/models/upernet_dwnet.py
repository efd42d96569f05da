# UperNet with the DWNet backbone (mmsegmentation 1.x): mmseg's upernet_swin.py with the backbone replaced.
# The backbone comes from layerzoo's plugin (pip install -e <layerzoo>). Without a checkpoint the backbone
# keeps its own init (the official pretrained=None); pass the ImageNet checkpoint with
# --cfg-options model.pretrained=<dwnet_tiny_224.pth> (as the official commands do).
_base_ = 'mmseg::_base_/models/upernet_swin.py'
custom_imports = dict(imports=['dwnet.mmseg'], allow_failed_imports=False)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='DWNet',
        embed_dim=96,
        depths=[2, 2, 6, 2],
        window_size=7,
        mlp_ratio=4.,
        drop_rate=0.,
        drop_path_rate=0.3,
        ape=False,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        use_checkpoint=False,
        dynamic=False),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
