# dynamic DWNet-T, UperNet, ADE20K, 512x512 crops, 160k iterations: AdamW lr 6e-5 wd 0.01 (no decay on norms), poly decay
# (power 1, to 0) with a linear warmup over the first 1500 iterations from 1e-6 x lr, batch 16 (8 GPUs x 2
# images), mIoU every 16k iterations.
_base_ = [
    './_base_/models/upernet_dwnet.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(embed_dim=96, depths=[2, 2, 6, 2], window_size=7, ape=False, drop_path_rate=0.3, patch_norm=True,
                  use_checkpoint=False, dynamic=True),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.),
    }))
# the official (mmcv) schedule: poly over all 160k iterations, the warmup factor applied on top of it during
# the first 1500 (the two schedulers below multiply)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=0, end=160000, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
# every BatchNorm of the official backbone and heads is a SyncBN in distributed training
sync_bn = 'torch'
