"""This project's named variants in timm (``timm.create_model('dia_resnet164')``), built by timm's own
``build_model_with_cfg``.

Every variant a paper's registry marks ``paper=True`` is registered by :func:`register_registry` (the
paper's models module calls it on import). The entrypoints live in a module of their own,
``common.timm_compat.layerzoo_<paper>`` (in ``sys.modules``, with its ``default_cfgs``), so timm lists them under
``layerzoo_<paper>`` (``timm.list_models(module='layerzoo_dianet')``) and nothing is written into the paper's modules.
A name timm already has is never overwritten.

timm's standard keyword arguments (those ``timm``'s ``train.py`` passes) are mapped as follows:

* ``num_classes``, ``in_chans``, ``global_pool``, ``drop_rate`` (dropout before the classifier): passed to
  the model, which takes them as part of :mod:`common.models`' contract;
* ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``: resolved by timm, the result is
  ``model.pretrained_cfg``; ``features_only`` / ``out_indices`` / ``feature_cls``: timm's features adapter
  over the model's ``feature_info`` (default: every stage);
* ``pretrained=True``: the variants have no released weights, so it needs a local file or state dict in the
  cfg (``pretrained_cfg_overlay=dict(file='model_best.pth.tar')``); timm then loads it with
  ``weights_only=True`` and drops the classifier when ``num_classes`` differs;
* ``bn_momentum``, ``bn_eps``: set on every BatchNorm layer; ``device``, ``dtype``: the model is moved;
* ``drop_path_rate``, ``drop_block_rate``: passed on when the constructor takes them; otherwise ``None`` / 0
  are ignored and any other value is refused (the model has no stochastic depth / DropBlock);
* ``scriptable``, ``exportable``, ``no_jit``, ``checkpoint_path``: handled by ``timm.create_model`` itself.
"""
import functools
import inspect
import sys
import types

import torch.nn as nn

__all__ = ["register_timm", "register_registry", "timm_module", "TIMM_KWARGS"]

#: timm's standard keyword arguments that the bridge maps (see the module docstring)
TIMM_KWARGS = ("num_classes", "in_chans", "global_pool", "drop_rate", "drop_path_rate", "drop_block_rate",
               "bn_momentum", "bn_eps", "device", "dtype", "features_only", "out_indices", "feature_cls")

_OURS = {}  # timm name -> our entrypoint
_NO_WEIGHTS = ("no weights are downloaded; build with pretrained=False and load a checkpoint with "
               "common.checkpoint.load_state_dict_strict, or pass pretrained_cfg_overlay=dict(file=PATH)")


def timm_module(paper):
    """The module (``common.timm_compat.layerzoo_<paper>``) that holds a paper's timm entrypoints and
    ``default_cfgs``; timm lists them under ``module='layerzoo_<paper>'`` (a name of its own: timm already has a
    ``dla`` module, Deep Layer Aggregation)."""
    name = f"{__name__}.layerzoo_{paper}"
    mod = sys.modules.get(name)
    if mod is None:
        mod = types.ModuleType(name, f"timm entrypoints of {paper}'s named variants (see {__name__}).")
        mod.default_cfgs = {}
        mod.__all__ = []
        sys.modules[name] = mod
    return mod


def _accepts(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None  # unknown: pass everything on
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _split_kwargs(name, builder, kwargs):
    """-> (kwargs for build_model_with_cfg, bn settings, (device, dtype)). Refuses what cannot apply."""
    accepted = _accepts(builder)
    kwargs = dict(kwargs)
    bn = {k: kwargs.pop(k) for k in ("bn_momentum", "bn_eps") if k in kwargs and
          (accepted is not None and k not in accepted)}
    move = {k: kwargs.pop(k) for k in ("device", "dtype") if k in kwargs and
            (accepted is not None and k not in accepted)}
    for k in ("drop_path_rate", "drop_block_rate"):
        if k in kwargs and accepted is not None and k not in accepted:
            v = kwargs.pop(k)
            if v:
                raise ValueError(f"{name}: {k}={v!r} cannot apply: the model has no "
                                 f"{'stochastic depth' if k == 'drop_path_rate' else 'DropBlock'} "
                                 f"(leave it unset or 0)")
    if "out_indices" in kwargs and not kwargs.get("features_only"):
        raise ValueError(f"{name}: out_indices needs features_only=True")
    return kwargs, bn, move


def _apply_bn(model, bn):
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            if bn.get("bn_momentum") is not None:
                m.momentum = bn["bn_momentum"]
            if bn.get("bn_eps") is not None:
                m.eps = bn["bn_eps"]


def _has_local_weights(cfg):
    return bool(cfg) and any(cfg.get(k) for k in ("file", "state_dict", "url", "hf_hub_id"))


def register_timm(name, builder, cfg, paper=None):
    """Register ``builder(**kwargs) -> nn.Module`` in timm as ``name`` with pretrained_cfg ``cfg`` (timm
    ``PretrainedCfg`` fields; unset ones get timm's defaults). The model is built by
    ``timm.models.build_model_with_cfg``. Returns False (and registers nothing) if timm already owns
    ``name``; True once registered by us."""
    from timm.models import build_model_with_cfg, is_model, register_model
    from timm.models._pretrained import PretrainedCfg

    from common.models import feature_net

    if name in _OURS:
        return True
    if is_model(name):
        return False
    try:
        PretrainedCfg(**cfg)
    except TypeError as exc:
        raise ValueError(f"{name}: pretrained_cfg has a key timm does not know ({exc})") from None
    paper = paper or (getattr(builder, "__module__", None) or "layerzoo").split(".")[0]
    mod = timm_module(paper)
    mod.default_cfgs[name] = dict(cfg)

    def entry(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        if pretrained and not (_has_local_weights(pretrained_cfg_overlay) or
                               _has_local_weights(pretrained_cfg if isinstance(pretrained_cfg, dict) else None)):
            raise RuntimeError(f"{name}: {_NO_WEIGHTS}")
        kwargs, bn, move = _split_kwargs(name, builder, kwargs)
        model = build_model_with_cfg(builder, name, pretrained, pretrained_cfg=pretrained_cfg,
                                     pretrained_cfg_overlay=pretrained_cfg_overlay, cache_dir=cache_dir,
                                     feature_cfg=dict(feature_cls=feature_net, out_indices=None), **kwargs)
        _apply_bn(model, bn)
        if move:
            model = model.to(**move)
        return model

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = mod.__name__
    entry.__doc__ = f"timm entrypoint of {name} (built by {getattr(builder, '__name__', builder)!s})."
    setattr(mod, name, entry)
    register_model(entry)
    _OURS[name] = entry
    return True


def register_registry(registry):
    """Register every ``paper=True`` variant of ``registry`` (a :class:`common.registry.Registry`) in timm,
    under ``common.timm_compat.<registry.name>``. Returns the names registered (a name timm already owns is
    skipped, never shadowed)."""
    done = []
    for v in registry.variants(paper=True):
        builder = functools.partial(registry.get(v.model), **v.kwargs)
        builder.__name__ = v.model
        builder.__module__ = registry.name
        if register_timm(v.name, builder, dict(v.pretrained_cfg), paper=registry.name):
            done.append(v.name)
    return done
