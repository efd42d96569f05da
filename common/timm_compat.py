"""Register this project's models in timm (``timm.create_model('dia_resnet164')``).

Each entry gets a pretrained_cfg (input size, mean/std, classifier name, num_classes). A name timm already
has is never overwritten: the papers' plain baselines stay in their paper's namespace.
"""
import sys

__all__ = ["register_timm"]

_OURS = set()


def register_timm(name, builder, cfg):
    """Register ``builder(**kwargs) -> nn.Module`` in timm as ``name``. Returns False if timm already owns it."""
    from timm.models import is_model, register_model

    if name in _OURS:
        return True
    if is_model(name):
        return False
    module = sys.modules[builder.__module__] if hasattr(builder, "__module__") else sys.modules[__name__]
    full_cfg = dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=None, crop_pct=1.0,
                    interpolation="bilinear", first_conv="conv1", classifier="fc", license="project")
    full_cfg.update(cfg)
    if not hasattr(module, "default_cfgs"):
        module.default_cfgs = {}
    module.default_cfgs[name] = full_cfg

    def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        if pretrained:
            raise RuntimeError(
                f"{name}: no weights are downloaded; build with pretrained=False and load a checkpoint with "
                f"common.checkpoint.load_state_dict_strict"
            )
        kwargs.setdefault("num_classes", full_cfg["num_classes"])
        model = builder(**kwargs)
        model.pretrained_cfg = model.default_cfg = dict(full_cfg, architecture=name, num_classes=kwargs["num_classes"])
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = module.__name__
    register_model(entry)
    _OURS.add(name)
    return True
