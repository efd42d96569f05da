"""The RLA-Net registry (constructors under the official class names) and the pieces the families share:
the ImageNet ``pretrained_cfg``, ``features_only`` for a trunk that carries the recurrent state, and the
timm group matcher of the RLA models."""
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from common.registry import Registry

__all__ = ["REGISTRY", "imagenet_cfg", "StageFeatures", "conv1x1", "conv3x3", "rla_group_matcher"]

REGISTRY = Registry("rlanet")


def imagenet_cfg(first_conv="conv1", classifier="fc", num_classes=1000):
    """Complete timm pretrained_cfg of an ImageNet variant (the official recipe's 224 crop of a 256 resize;
    no released weights are downloadable: ``url`` is empty)."""
    return dict(
        url="", num_classes=num_classes, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
        crop_mode="center", interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        first_conv=first_conv, classifier=classifier,
        license="unspecified (the official repository states none)",
        paper_name="Recurrence along Depth: Deep Convolutional Neural Networks with Recurrent Layer "
                   "Aggregation (NeurIPS 2021)",
        paper_ids="arXiv:2110.11852", origin_url="https://github.com/joyfang1106/RLANet",
    )


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=dilation, groups=groups, bias=False,
                     dilation=dilation)


class StageFeatures(nn.Module):
    """``features_only`` of a model whose trunk is not a chain of children (the recurrent state ``h`` runs
    beside the stages): the model's own trunk children, under their names (so the state_dict keys are the
    model's, without the head), run by the model's trunk function, returning the maps of ``out_indices``.

    The model declares ``feature_children`` (children the maps need), ``feature_attrs`` (plain attributes
    the trunk function reads) and ``trunk_fn(m, x, n_maps)`` -> the first ``n_maps`` stage maps. Built by
    :func:`common.models.feature_net` (``model.feature_cls``) with out_indices already resolved."""

    def __init__(self, model, out_indices, **_timm_kwargs):
        super().__init__()
        from timm.models._features import FeatureInfo

        self.out_indices = tuple(out_indices)
        self.feature_info = FeatureInfo(list(model.feature_info), self.out_indices)
        for name, child in model.named_children():
            if name in model.feature_children:
                self.add_module(name, child)
        for name in model.feature_attrs:
            setattr(self, name, getattr(model, name))
        self.grad_checkpointing = getattr(model, "grad_checkpointing", False)
        self._trunk_fn = type(model).trunk_fn

    def set_grad_checkpointing(self, enable=True):
        self.grad_checkpointing = bool(enable)

    def forward(self, x):
        maps = self._trunk_fn(self, x, max(self.out_indices) + 1)
        return [maps[i] for i in self.out_indices]


def rla_group_matcher(coarse, stem, per_stage, post, blocks=("stages", "stage_bns")):
    """timm group matcher of the RLA models: the stem; per block ``stages.s.t`` with its ``stage_bns.s.t``
    (per stage when ``coarse``); the stage's shared modules (``conv_outs.s``, ...) join the stage's last
    block; the modules of ``post`` join the last block."""
    def alt(names):
        return "|".join(names) or "$^"

    if coarse:
        blk = [(rf"^(?:{alt(blocks + per_stage)})\.(\d+)\.", None)]
    else:
        blk = [(rf"^(?:{alt(blocks)})\.(\d+)\.(\d+)\.", None), (rf"^(?:{alt(per_stage)})\.(\d+)\.", (99999,))]
    return dict(stem=rf"^(?:{alt(stem)})\.", blocks=blk + [(rf"^(?:{alt(post)})\.", (99999,))])
