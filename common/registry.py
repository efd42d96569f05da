"""Model registry: one per paper, mapping the paper's official constructor names to callables, plus the
paper's table of named variants.

A *constructor* is the official function (``dia_resnet(depth, num_classes, block_name)``). A *variant* is a
named configuration of one, declared once with its arguments and its complete timm ``pretrained_cfg``
(``dia_resnet164`` = ``dia_resnet(depth=164, block_name='bottleneck')``, 100 classes, 32x32 CIFAR input).
The timm registration (:func:`common.timm_compat.register_registry`), the benchmark aliases, the recipes
and the tests all read the variants from here::

    REGISTRY.add_variant('dia_resnet164', 'dia_resnet', dict(depth=164, block_name='bottleneck'),
                         pretrained_cfg=dict(num_classes=100, input_size=(3, 32, 32), ...), paper=True)
    REGISTRY.get_variant('dia_resnet164').build_kwargs()   # {'num_classes': 100, 'depth': 164, ...}
    REGISTRY.create('dia_resnet164')                        # a constructor name or a variant name
    REGISTRY.create('dia_resnet164', features_only=True, out_indices=(1, 2))
"""
import fnmatch
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

__all__ = ["Registry", "UnknownModelError", "Variant", "REQUIRED_PRETRAINED_CFG_KEYS"]

#: keys every variant's pretrained_cfg must give (timm ``PretrainedCfg`` field names)
REQUIRED_PRETRAINED_CFG_KEYS = ("num_classes", "input_size", "mean", "std", "crop_pct", "interpolation",
                                "first_conv", "classifier", "license", "paper_ids", "paper_name", "origin_url")


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message lists the valid names."""

    def __str__(self):  # KeyError quotes its argument; show the plain message instead
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Variant:
    """A named configuration of a registered constructor (read-only)."""

    name: str
    model: str  #: constructor name in the same registry
    kwargs: Mapping[str, Any]  #: constructor arguments, without ``num_classes`` (that is in the cfg)
    pretrained_cfg: Mapping[str, Any]  #: timm PretrainedCfg fields
    paper: bool = False  #: one of the paper's headline models: registered in timm, aliased in the benchmarks
    registry: str = field(default="", compare=False)

    @property
    def num_classes(self):
        return self.pretrained_cfg["num_classes"]

    def build_kwargs(self, **overrides):
        """The constructor's keyword arguments: ``num_classes`` from the cfg, the variant's, then ``overrides``."""
        return {"num_classes": self.num_classes, **self.kwargs, **overrides}

    def describe(self, **overrides):
        args = ", ".join(f"{k}={v!r}" for k, v in self.build_kwargs(**overrides).items())
        return f"{self.model}({args})"


class Registry:
    """Name -> constructor, with a default config per entry (timm's ``pretrained_cfg`` in spirit), and the
    paper's named variants."""

    def __init__(self, name):
        self.name = name
        self._fns = {}
        self._cfgs = {}
        self._variants = {}

    # -- constructors ----------------------------------------------------------------------------------
    def register(self, name=None, default_cfg=None):
        def deco(fn):
            key = name or fn.__name__
            if key in self._fns:
                raise ValueError(f"{self.name}: model {key!r} is already registered")
            self._fns[key] = fn
            self._cfgs[key] = dict(default_cfg or {})
            return fn

        return deco

    def __contains__(self, name):
        return name in self._fns or name in self._variants

    def get(self, name):
        if name not in self._fns:
            raise UnknownModelError(
                f"unknown {self.name} model {name!r}; choose one of: {', '.join(self.list_models())}"
                + (f" (named variants: {', '.join(self.list_variants())})" if self._variants else "")
            )
        return self._fns[name]

    def create(self, name, *, features_only=False, out_indices=None, **kwargs):
        """Build a constructor (``name`` = its official name, ``kwargs`` its arguments) or a named variant
        (``kwargs`` override the variant's). ``features_only=True`` returns the stage maps
        (:func:`common.models.feature_net`, ``out_indices`` as in timm)."""
        if name in self._variants:
            v = self._variants[name]
            model = self.get(v.model)(**v.build_kwargs(**kwargs))
            model.pretrained_cfg = model.default_cfg = dict(v.pretrained_cfg, architecture=name,
                                                            num_classes=getattr(model, "num_classes",
                                                                                v.num_classes))
        else:
            model = self.get(name)(**kwargs)
        if out_indices is not None and not features_only:
            raise ValueError(f"{self.name} model {name!r}: out_indices needs features_only=True")
        if features_only:
            from common.models import feature_net

            model = feature_net(model, out_indices)
        return model

    def default_cfg(self, name):
        self.get(name)
        return dict(self._cfgs[name])

    def list_models(self, pattern="*"):
        """Constructor names (official names), sorted."""
        return sorted(n for n in self._fns if fnmatch.fnmatch(n, pattern))

    # -- named variants --------------------------------------------------------------------------------
    def add_variant(self, name, model, kwargs=None, *, pretrained_cfg, paper=False):
        """Declare the variant ``name`` = ``model(**kwargs)`` with its complete ``pretrained_cfg``."""
        if name in self._variants or name in self._fns:
            raise ValueError(f"{self.name}: {name!r} is already registered")
        self.get(model)
        missing = [k for k in REQUIRED_PRETRAINED_CFG_KEYS if k not in pretrained_cfg]
        if missing:
            raise ValueError(f"{self.name} variant {name!r}: pretrained_cfg lacks {', '.join(missing)}")
        kwargs = dict(kwargs or {})
        if "num_classes" in kwargs:
            raise ValueError(f"{self.name} variant {name!r}: give num_classes in pretrained_cfg, not in kwargs")
        v = Variant(name, model, MappingProxyType(kwargs), MappingProxyType(dict(pretrained_cfg)), bool(paper),
                    self.name)
        self._variants[name] = v
        return v

    def get_variant(self, name):
        if name not in self._variants:
            raise UnknownModelError(f"unknown {self.name} variant {name!r}; choose one of: "
                                    f"{', '.join(self.list_variants())}")
        return self._variants[name]

    def variants(self, pattern="*", *, paper=None):
        """The variants (declaration order) whose name matches ``pattern``; ``paper=True`` keeps the headline
        models, ``paper=False`` the others."""
        return [v for n, v in self._variants.items()
                if fnmatch.fnmatch(n, pattern) and (paper is None or v.paper == paper)]

    def list_variants(self, pattern="*", *, paper=None):
        return [v.name for v in self.variants(pattern, paper=paper)]
