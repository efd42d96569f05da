# dynamic DWNet-T: the DWNet-T config below (_base_), with this backbone.
_base_ = './upernet_dwnet_tiny_patch4_window7_512x512_160k_ade20k.py'

model = dict(
    backbone=dict(embed_dim=96, depths=[2, 2, 6, 2], drop_path_rate=0.3, dynamic=True),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384))
