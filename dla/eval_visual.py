"""Learning curves of a DLA ImageNet run as PNGs — the official ``imagenet/eval_visual.py`` flags and outputs.

    python dla/eval_visual.py --work-dir work_dirs -ld resnet50_dla_l_

reads ``{--work-dir}/{--log-dir}/`` and writes there ``acc1_plot.png`` and ``acc5_plot.png`` (training vs
validation accuracy), ``loss_plot.png`` (training loss, and the validation loss of ``valloss_plot.txt``) and,
for a ``train_pro.py`` run, ``lr_plot.png`` (``lr_plot.txt``). The curve logs are the ``"{epoch} {value}"``
lines that ``dla/train.py`` / ``dla/train_pro.py`` write as plain numbers, or the official scripts' ``str()`` of
a CUDA tensor (``5 tensor(61.234, device='cuda:0')``); a folder holding only ``log.jsonl`` is read from that.
Reading and plotting are ``common.plots``' (shared with RLA-Net's ``eval_visual.py``).

Fixed official defects: the default ``-ld`` was ``resnet50_mrlal_`` (MRLA's folder; here ``resnet50_dla_l_``, the
folder of ``train.py -a resnet50_dla_l``); the values parse whatever their text (officially
``line.split('(')[1]``, which fails on plain numbers and on CPU tensors); a missing or malformed log is one
message naming the file and line; nothing waits on ``plt.show()`` (headless).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import plots  # noqa: E402

__all__ = ["get_parser", "main"]


def get_parser(description="DLA learning curves as PNG"):
    return plots.curves_parser(description, "resnet50_dla_l_")


def main(argv=None):
    return plots.run_on_log_dir(get_parser().parse_args(argv), plots.eval_visual)


if __name__ == "__main__":
    main()
