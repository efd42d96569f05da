"""Model registry: one per paper, mapping the paper's official constructor names to callables."""
import fnmatch

__all__ = ["Registry", "UnknownModelError"]


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message lists the valid names."""

    def __str__(self):  # KeyError quotes its argument; show the plain message instead
        return str(self.args[0]) if self.args else ""


class Registry:
    """Name -> constructor, with a default config per entry (timm's ``pretrained_cfg`` in spirit)."""

    def __init__(self, name):
        self.name = name
        self._fns = {}
        self._cfgs = {}

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
        return name in self._fns

    def get(self, name):
        if name not in self._fns:
            raise UnknownModelError(
                f"unknown {self.name} model {name!r}; choose one of: {', '.join(self.list_models())}"
            )
        return self._fns[name]

    def create(self, name, **kwargs):
        return self.get(name)(**kwargs)

    def default_cfg(self, name):
        self.get(name)
        return dict(self._cfgs[name])

    def list_models(self, pattern="*"):
        return sorted(n for n in self._fns if fnmatch.fnmatch(n, pattern))
