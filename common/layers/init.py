"""Weight initialisation shared by the papers' ImageNet ResNets (torchvision's ResNet scheme)."""
import torch.nn as nn

__all__ = ["init_resnet_"]


def init_resnet_(model, zero_init_last_bn=False, block_types=()):
    """Kaiming-normal (fan_out, relu) for every ``Conv2d``, weight 1 / bias 0 for every BatchNorm2d and
    GroupNorm, in module order; with ``zero_init_last_bn`` the ``bn3`` weight of every block of
    ``block_types`` is then set to 0 (each residual branch starts as the identity)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    if zero_init_last_bn:
        for m in model.modules():
            if isinstance(m, block_types):
                nn.init.constant_(m.bn3.weight, 0)
    return model
