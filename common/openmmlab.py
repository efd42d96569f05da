"""The papers' detection backbones inside OpenMMLab (mmdetection 3.x, mmsegmentation 1.x, mmengine).

A paper's plugin module (``dla.mmdet``, ``rlanet.mmdet``, ``dwnet.mmdet``, ``dwnet.mmseg``) is one call::

    ResNet_dlal = register_backbone(dla.create_backbone, 'ResNet_dlal', 'mmdet', __name__)

which registers, in that library's ``MODELS`` registry and under the official class name, an
``mmengine.model.BaseModule`` subclass of the plain-PyTorch backbone that ``create_backbone(name, ...)``
builds. It is the same module (same constructor arguments, same ``state_dict`` keys, so checkpoints of the
official detectors load; same ``forward``, ``frozen_stages`` / ``norm_eval`` and ``init_weights``) with
what mmengine expects of a model part: ``init_cfg``, ``is_init``. ``init_cfg=dict(type='Pretrained',
checkpoint=path)`` (or ``pretrained=path``) is loaded by the backbone's own loader: read safely
(:func:`common.checkpoint.read_state_dict`), ``state_dict`` / ``model`` sub-dict and ``module.`` prefix
handled, and every key that does not load is reported with its reason (:class:`common.backbone.LoadReport`,
logged, kept as ``backbone.load_report``) instead of being skipped silently.

A config loads a plugin with ``custom_imports=dict(imports=['dla.mmdet'], allow_failed_imports=False)``.
"""
import importlib
import types

__all__ = ["register_backbone", "backbone_class", "MissingOpenMMLabError", "LIBRARIES"]

#: library -> the module holding its MODELS registry
LIBRARIES = {"mmdet": "mmdet.registry", "mmseg": "mmseg.registry"}

_INSTALL = "pip install -e '.[mmdet]' (mmengine, mmdet, mmsegmentation and the compiled mmcv 2.1.0)"


class MissingOpenMMLabError(ImportError):
    """mmengine / mmdet / mmseg is not installed."""


def _import(module, what):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingOpenMMLabError(f"{what} needs {module.split('.')[0]} ({err}); install it with: "
                                    f"{_INSTALL}") from err


def backbone_class(create_backbone, name):
    """The class ``create_backbone(name, ...)`` builds (a :class:`common.backbone.DetectionBackbone`
    subclass), from the factory's class table (:func:`common.backbone.backbone_factory`)."""
    classes = getattr(create_backbone, "classes", None)
    if classes is None:
        raise TypeError(f"{create_backbone!r} is not a backbone factory of common.backbone.backbone_factory")
    if name not in classes:
        create_backbone(name)  # raises the factory's own "unknown backbone" error, naming the valid ones
    return classes[name]


def register_backbone(create_backbone, name, library, module):
    """Register the backbone ``create_backbone(name, ...)`` in ``library``'s ``MODELS`` (``'mmdet'`` or
    ``'mmseg'``) under ``name`` and return the registered class; ``module`` is the plugin module that holds it
    (``'dla.mmdet'``: the class is ``dla.mmdet.ResNet_dlal``)."""
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {', '.join(LIBRARIES)}, got {library!r}")
    registry_module = LIBRARIES[library]
    base_module = _import("mmengine.model", f"the {library} plugin of {name}").BaseModule
    models = _import(registry_module, f"the {library} plugin of {name}").MODELS
    plain = backbone_class(create_backbone, name)

    def init_weights(self, pretrained=None):
        """The backbone's ``init_weights`` (official init, or the ``Pretrained`` checkpoint through the
        backbone's reporting loader); marks the module initialised for mmengine."""
        report = plain.init_weights(self, pretrained)
        self._is_init = True
        return report

    namespace = {
        "__module__": module,
        "__qualname__": name,
        "__doc__": (f"{plain.__module__}.{plain.__qualname__} as an mmengine BaseModule, registered in "
                    f"{library}'s MODELS as {name!r}.\n\n{plain.__doc__ or ''}"),
        "init_weights": init_weights,
    }
    # plain first: its __init__ / forward / train / init_weights win; BaseModule.__init__ runs through the
    # plain class's super().__init__() and leaves init_cfg to the plain class
    cls = types.new_class(name, (plain, base_module), exec_body=lambda ns: ns.update(namespace))
    models.register_module(name=name, module=cls)
    return cls
