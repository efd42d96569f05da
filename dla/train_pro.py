"""Train the DLA ImageNet models with the official ``imagenet/train_pro.py`` recipe: ``dla/train.py`` with label
smoothing and a per-iteration LR schedule.

    python dla/train_pro.py /data/imagenet -a resnet50_dla_l -b 256 --epochs 100 --world-size 1 --rank 0
    python dla/train_pro.py /data/imagenet -a resnet50_dla_l --scheduler step
    python dla/train_pro.py -a resnet50_dla_l --demo --img-size 32 -b 32 -j 0 --epochs 2 --warmup-epochs 1  # CPU

What differs from ``train.py`` (official): the loss is cross-entropy with label smoothing 0.1 (targets
``0.9 * onehot + 0.1 / K``; ``mean_b sum_k -q_k log p_k``), and the LR is set after every optimizer step by
``--scheduler``:

* ``cos`` (default): a linear warm-up over the first ``W = --warmup-epochs * N`` steps (``N`` = steps per epoch),
  step ``k`` at ``lr * k / W``, then a cosine to 0 over the remaining ``T = (--epochs - --warmup-epochs) * N``
  steps: ``lr * (1 + cos(pi * (k - W) / T)) / 2`` (officially ``W = 5N``, ``T = 95N`` for the default 100 epochs);
* ``step``: the same warm-up, then ``lr * 0.1 ** m`` where ``m`` counts the milestones ``29N+1, 59N+1, 89N+1``
  reached.

The LR after each epoch's last step is logged to ``lr_plot.txt`` (and drawn as ``lr_plot.png``) besides the
curve logs of ``train.py``; flags, outputs and launch modes are ``train.py``'s, plus ``--scheduler``.

Fixed official defects: the default ``-a`` was ``resnet50_mrla``, which is not registered (it is the paper's
``resnet50_dla_l`` here); ``--warmup-epochs`` was ignored (5 hard-coded): it is honoured, default 5; the
smoothing used ``K = 1000`` classes whatever the data (here the data set's class count, so ``--demo`` smooths
over its 10 classes); the very first step ran at the full LR (the scheduler only stepped after it) and now
runs at ``lr / W``; the step schedule set ``lr * 0.1`` at every milestone (never 0.01 or 0.001), decayed only
the first parameter group when ``--wd-la`` made two, and crashed with an IndexError after its last milestone:
here every group decays ×0.1 per milestone; a resumed run continues the schedule where it stopped
(officially it restarted the warm-up).
"""
import math
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common.train import recipe  # noqa: E402
from common.train.cli import cli as run_cli  # noqa: E402
from dla import train  # noqa: E402

__all__ = ["get_parser", "lr_factor", "ProRecipe", "main", "cli", "SMOOTHING", "MILESTONE_EPOCHS"]

SMOOTHING = 0.1
MILESTONE_EPOCHS = (29, 59, 89)  # the step schedule decays after these epochs' steps (+1 step)


def get_parser():
    p = train.get_parser("PyTorch ImageNet Training (DLA, train_pro recipe)", arch="resnet50_dla_l")
    p.add_argument("--scheduler", default="cos", choices=["cos", "step"],
                   help="per-iteration learning rate schedule after the linear warm-up (default: cos)")
    p.set_defaults(warmup_epochs=5)
    return p


def lr_factor(k, steps_per_epoch, epochs, warmup_epochs, scheduler="cos"):
    """The LR of optimizer step ``k`` (0-based) as a fraction of ``--lr`` (see the module docstring)."""
    n = max(int(steps_per_epoch), 1)
    warm = warmup_epochs * n
    if k <= warm and warm > 0:
        return max(k, 1) / warm
    if scheduler == "cos":
        total = max((epochs - warmup_epochs) * n, 1)
        return (1 + math.cos(math.pi * (k - warm) / total)) / 2
    return 0.1 ** sum(k >= e * n + 1 for e in MILESTONE_EPOCHS)


class ProRecipe(train.DLARecipe):
    """``train.py``'s recipe with label smoothing and the per-iteration schedule; ``lr_plot.txt`` logged too."""

    curve_files = train.CURVES + (("lr_plot.txt", "lr_end"),)

    def build_criterion(self, args, num_classes):
        return recipe.build_criterion(False, smoothing=SMOOTHING)

    def epoch_lr(self, args, epoch):
        return None  # the scheduler sets it after every step

    def build_scheduler(self, optimizer, args, steps_per_epoch):
        for group in optimizer.param_groups:
            group["initial_lr"] = args.lr
        factor = _Factor(steps_per_epoch, args.epochs, args.warmup_epochs, args.scheduler)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class _Factor:
    def __init__(self, *spec):
        self.spec = spec

    def __call__(self, k):
        return lr_factor(k, *self.spec)


def main(argv=None):
    return train.main(argv, recipe_cls=ProRecipe, parser=get_parser())


def cli(argv=None):
    """``main``; bad input ends with one ``error:`` line and exit status 2."""
    run_cli(main, argv)


if __name__ == "__main__":
    cli()
