"""DAC-DETR in PaddlePaddle: the same model, losses and recipe as :mod:`dacdetr.models`, in pure Paddle.

``build_model(args) -> (model, criterion, postprocessors)`` from the arguments of
``dacdetr.main.get_args_parser()``; weights convert with :mod:`dacdetr.paddle.convert`; train and
evaluate with ``python -m dacdetr.paddle.main``. Needs ``paddlepaddle`` (``pip install -e '.[paddle]'``).
"""


def build_model(args):
    """Detector, :class:`~dacdetr.paddle.criterion.SetCriterion` and ``{"bbox": NMSPostProcess()}``."""
    from .criterion import build_criterion
    from .detr import build

    model = build(args)
    criterion, postprocessors = build_criterion(args)
    return model, criterion, postprocessors


__all__ = ["build_model"]
