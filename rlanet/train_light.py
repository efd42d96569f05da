"""Train / evaluate RLA-MobileNetV2 on ImageNet — the official ``train_light.py`` (the MobileNetV2 recipe of
``train.py``) with its flags and defaults, over ``common``.

    python rlanet/train_light.py -a dsrla_mobilenetv2 -b 96 /data/imagenet
    python rlanet/train_light.py -a dsrla_mobilenetv2 -e \
        --resume work_dirs/dsrla_mobilenetv2_/model_best.pth.tar /data/imagenet
    python rlanet/train_light.py -a dsrla_mobilenetv2 --demo --image-size 32 -j 0 -b 64 --epochs 1   # CPU
    torchrun --nproc_per_node 2 rlanet/train_light.py -a dsrla_mobilenetv2 /data/imagenet

The script is ``rlanet/train.py`` with the recipe that differs (official): lr ``0.045 * 0.98 ** epoch`` set at
the start of every epoch (``common.train.recipe.examples_lr(epoch, 0.045, decay_epochs=1, decay_rate=0.98)``),
weight decay 4e-5 on every parameter, 400 epochs, ``-b`` 96, ``-j`` 12, ``-p`` 50, ``--world-size`` 1,
``--dist-backend`` gloo, and no ``--rank`` / ``--multiprocessing-distributed`` flags (several processes come from
torchrun, ``torch.distributed.launch`` or ``slurm/launch.py``). Output folder, checkpoint keys (``arch``
included, as officially) and curve logs are those of ``train.py``; see its docstring for the additions.

Fixed official defects (besides those listed in ``train.py``): the default ``-a`` was ``rla_mobilenet_k6``, a
name the registry does not have; it is the paper's RLA-MobileNetV2, ``dsrla_mobilenetv2``. The DDP path had no
rank (``--world-size > 1`` initialised the process group without one); here each process takes its rank from the
launcher (or ``--dist-url`` with ``env://`` variables). ``target.cuda()`` was unconditional (CPU runs work).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlanet import train  # noqa: E402


def get_parser():
    return train.get_parser("train_light")


def main(argv=None):
    return train.main(argv, kind="train_light")


if __name__ == "__main__":
    train.run_cli(kind="train_light")
