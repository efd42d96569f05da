"""DAC-DETR models: ``build_model(args) -> (model, criterion, postprocessors)``."""


def build_model(args):
    """Detector from :func:`.deformable_detr.build`, criterion and ``{"bbox": NMSPostProcess}`` from
    :func:`.criterion.build_criterion` (imported lazily)."""
    from .criterion import build_criterion
    from .deformable_detr import build

    model = build(args)
    criterion, postprocessors = build_criterion(args)
    return model, criterion, postprocessors


__all__ = ["build_model"]
