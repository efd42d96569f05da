"""Learning curves of an RLA-Net run as PNGs — the official ``eval_visual.py`` flags and outputs.

    python rlanet/eval_visual.py --work-dir work_dirs -ld rla_resnet50_

reads ``{--work-dir}/{--log-dir}/`` and writes ``acc1_plot.png`` and ``acc5_plot.png`` (training vs
validation accuracy) and ``loss_plot.png`` (training loss) there, as the official script does. The curve logs
are the ``"{epoch} {value}"`` lines of ``train_acc1.txt``, ``val_acc1.txt``, ``train_acc5.txt``,
``val_acc5.txt`` and ``loss_plot.txt``, in either format: plain numbers (``rlanet/train.py``) or the official
``str()`` of a tensor (``5 tensor(61.234, device='cuda:0')``, also ``tensor(61.2)`` of a CPU run). A folder
holding only our ``log.jsonl`` is read from that. The reading and plotting are ``common.plots``'
(:func:`common.plots.plot_examples_curves`), shared with DLA's ``eval_visual.py``.

Fixed official defects: the values are parsed as numbers whatever their text (officially
``line.split('(')[1].split(',')[0]``, which fails on plain numbers and on CPU tensors), a missing or malformed
log stops with one message naming the file and line, and nothing waits on ``plt.show()`` (headless).
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import plots  # noqa: E402
from common.plots import parse_official_value as parse_value  # noqa: E402,F401
from common.plots import plot_examples_curves as plot_log_dir  # noqa: E402,F401
from common.plots import read_examples_records as read_records  # noqa: E402,F401
from common.plots import read_official_curve as read_curve  # noqa: E402,F401

__all__ = ["parse_value", "read_curve", "read_records", "plot_log_dir", "get_parser", "main"]


def get_parser():
    return plots.curves_parser("RLA-Net learning curves as PNG", "rla_resnet50_")


def main(argv=None):
    return plots.run_on_log_dir(get_parser().parse_args(argv), plots.eval_visual)


if __name__ == "__main__":
    main()
