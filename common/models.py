"""The classifier contract every classification model of this project follows (timm's model API).

A model subclasses :class:`ClassifierModel` and, in ``__init__``:

1. registers its top-level children **in execution order**: stem, stages, any final norm / activation.
   Activations are modules (``nn.ReLU``) rather than ``F.relu`` calls, so the trunk is a plain chain of
   children; a ReLU has no parameters, so the state_dict keys do not change;
2. lists the stage attribute names in the class attribute ``stage_names`` (e.g. ``('layer1', 'layer2',
   'layer3')``; each name ends with its stage number) and, where the blocks of a stage sit in a container
   attribute, names it in ``blocks_attr`` (``'ModuleList'`` for ``layer1.ModuleList.0``; ``None`` when the
   stage itself is the block sequence, ``layer1.0``);
3. sets ``self.feature_info``: one ``dict(num_chs=, reduction=, module=)`` per stage (``module`` is the name
   of the top-level child whose output is that stage's map; the last entry may name the final activation so
   that the last map equals ``forward_features``);
4. calls ``self.init_head(num_features, num_classes, global_pool, drop_rate)`` last, which registers
   ``global_pool`` and the classifier under the class attribute ``head_name`` (``'fc'``, ``'classifier'``, ...)
   after the trunk, where the official models have their classifier (same keys, same RNG draws).

It then has, with timm's meanings:

* ``forward_features(x)``: the trunk (every child before ``global_pool``, in order; stages run under
  ``torch.utils.checkpoint`` when grad checkpointing is on and autograd records);
* ``forward_head(x, pre_logits=False)``: pool, dropout ``drop_rate``, classifier (``pre_logits`` stops before
  the classifier and gives ``(B, num_features)`` for the ``'avg'`` pool);
* ``forward(x) == forward_head(forward_features(x))``;
* ``get_classifier()``, ``reset_classifier(num_classes, global_pool=None)`` (``num_classes=0`` gives an
  ``nn.Identity`` head: the model returns pooled features), ``num_classes``, ``num_features``;
* ``feature_info``, and ``features_only``: :func:`feature_net` wraps the model in timm's ``FeatureListNet``,
  which runs the same children in order and returns the stage maps chosen by ``out_indices`` (entries with a
  ``hook_type`` -- a map inside a child, e.g. ``'layers.0.downsample'`` with ``'forward_pre'`` -- use timm's
  ``FeatureHookNet`` over the same children instead);
* ``no_weight_decay()`` (names excluded from weight decay beyond timm's 1-D rule; empty by default),
  ``group_matcher(coarse=False)`` (stem / stage / block groups for layer-wise LR decay),
  ``set_grad_checkpointing(enable=True)``.

Grad checkpointing recomputes each stage in the backward pass. Outputs and gradients are unchanged (the RNG
state is restored for dropout); as in timm, BatchNorm running statistics are updated again during the
recomputation. A model whose trunk is not a chain of children (state carried across stages) overrides
``forward_features`` and gives ``features_only`` its own way; the contract test
(``tests/test_model_contract.py``) runs every registered variant through all of the above.
"""
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["ClassifierModel", "feature_net", "HEAD_CHILDREN"]

#: top-level children that belong to the head (everything registered before them is the trunk)
HEAD_CHILDREN = ("global_pool",)


class ClassifierModel(nn.Module):
    """Base class of the contract described in :mod:`common.models`."""

    head_name = "fc"
    stage_names = ()
    blocks_attr = None

    def init_head(self, num_features, num_classes, global_pool="avg", drop_rate=0.0):
        """Register ``global_pool`` and the classifier (``self.<head_name>``); call it after the trunk."""
        self.num_features = self.head_hidden_size = num_features
        self.drop_rate = float(drop_rate)
        self.grad_checkpointing = False
        self.reset_classifier(num_classes, global_pool if global_pool is not None else "avg")

    # -- head --------------------------------------------------------------------------------------
    def get_classifier(self):
        return getattr(self, self.head_name)

    def reset_classifier(self, num_classes, global_pool=None):
        """New classifier for ``num_classes`` (0: identity head); ``global_pool`` as timm's
        ``SelectAdaptivePool2d`` (``'avg'``, ``'max'``, ``'avgmax'``, ``'catavgmax'``; ``''`` = no pooling,
        only with ``num_classes=0``). The new layer has PyTorch's default init, on the model's device/dtype."""
        from timm.layers import create_classifier

        if global_pool is None:
            global_pool = self.global_pool.pool_type
        if not global_pool and num_classes:
            raise ValueError(f"{type(self).__name__}: global_pool='' (no pooling) needs num_classes=0, "
                             f"got num_classes={num_classes}")
        ref = next(self.parameters(), None)
        factory = {} if ref is None else dict(device=ref.device, dtype=ref.dtype)
        self.num_classes = int(num_classes)
        # 'avg' is computed as a mean over H, W (timm's 'fast' avg pool): the same numbers as an adaptive
        # average pool, and FLOP counters do not count it, as they do not count the official models' head pool
        pool_type = "fast" if global_pool == "avg" else global_pool
        self.global_pool, head = create_classifier(self.num_features, self.num_classes, pool_type=pool_type,
                                                   **factory)
        setattr(self, self.head_name, head)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    # -- trunk -------------------------------------------------------------------------------------
    def trunk(self):
        """``[(name, module)]`` of the top-level children before the head, in execution order."""
        out = []
        for name, module in self.named_children():
            if name in HEAD_CHILDREN:
                break
            out.append((name, module))
        return out

    def forward_features(self, x):
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        for name, module in self.trunk():
            if ckpt and name in self.stage_names:
                x = checkpoint(module, x, use_reentrant=False)
            else:
                x = module(x)
        return x

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    # -- training helpers --------------------------------------------------------------------------
    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def no_weight_decay(self):
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """timm's parameter-group matcher: ``stem`` (trunk children before the first stage), ``blocks``
        (per stage when ``coarse``, else per block, then the rest of the stage, then the final norm)."""
        names = [n for n, _ in self.trunk()]
        first = names.index(self.stage_names[0])
        last = names.index(self.stage_names[-1])
        prefix = re.sub(r"\d+$", "", self.stage_names[0])
        if any(not re.fullmatch(re.escape(prefix) + r"\d+", s) for s in self.stage_names):
            raise NotImplementedError(f"{type(self).__name__}: stage names {self.stage_names} do not share a "
                                      f"numbered prefix; override group_matcher")

        def alt(children):
            return "|".join(re.escape(n) for n in children) or "$^"

        stage = rf"^{re.escape(prefix)}(\d+)"
        post = [(rf"^(?:{alt(names[last + 1:])})\.", (99999,))]
        if coarse:
            blocks = [(stage + r"\.", None)] + post
        else:
            inner = rf"\.{re.escape(self.blocks_attr)}\.(\d+)\." if self.blocks_attr else r"\.(\d+)\."
            blocks = [(stage + inner, None), (stage + r"\.", (99999,))] + post
        return dict(stem=rf"^(?:{alt(names[:first])})\.", blocks=blocks)


def feature_net(model, out_indices=None, **kwargs):
    """``features_only``: timm's ``FeatureListNet`` over ``model`` (its ``feature_info``), returning the maps
    of ``out_indices`` (default: every stage; negative indices count from the end; an int ``k`` means the last
    ``k`` maps, as in timm). Used by the timm
    bridge (as ``feature_cls`` of ``build_model_with_cfg``) and by the registries' ``create``."""
    from timm.models import FeatureListNet

    if not getattr(model, "feature_info", None):
        raise ValueError(f"{type(model).__name__} has no feature_info; features_only is not available")
    n = len(model.feature_info)
    if out_indices is None:
        out_indices = tuple(range(n))
    if isinstance(out_indices, int):
        if not 0 < out_indices <= n:
            raise ValueError(f"{type(model).__name__}: out_indices={out_indices} (the last k maps) must be in "
                             f"1..{n}")
        out_indices = tuple(range(n - out_indices, n))
    out_indices = tuple(out_indices)
    bad = [i for i in out_indices if not -n <= i < n]
    if bad:
        raise ValueError(f"{type(model).__name__}: out_indices {bad} out of range for {n} feature maps "
                         f"(valid: 0..{n - 1} or negative)")
    out_indices = tuple(i % n for i in out_indices)
    # a trunk that is not a chain of children (state carried across stages) names its own class
    if getattr(model, "feature_cls", None) is not None:
        return model.feature_cls(model, out_indices=out_indices, **kwargs)
    if any("hook_type" in i for i in model.feature_info):
        # maps taken inside a child (e.g. a stage's input to its downsample): timm's hooks, same keys
        from timm.models import FeatureHookNet

        return FeatureHookNet(model, out_indices=out_indices, no_rewrite=False, **kwargs)
    # stage maps named inside a top-level Sequential ('stages.0') need timm's one-level flattening
    kwargs.setdefault("flatten_sequential", any("." in i["module"] for i in model.feature_info))
    return FeatureListNet(model, out_indices=out_indices, **kwargs)
