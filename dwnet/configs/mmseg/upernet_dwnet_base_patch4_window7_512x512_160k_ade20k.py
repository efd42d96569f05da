# DWNet-B: the DWNet-T config below (_base_), with this backbone.
_base_ = './upernet_dwnet_tiny_patch4_window7_512x512_160k_ade20k.py'

model = dict(
    backbone=dict(embed_dim=128, depths=[2, 2, 18, 2], drop_path_rate=0.3, dynamic=False),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
