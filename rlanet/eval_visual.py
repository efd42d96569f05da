"""Learning curves of an RLA-Net run as PNGs — the official ``eval_visual.py`` flags and outputs.

    python rlanet/eval_visual.py --work-dir work_dirs -ld rla_resnet50_

reads ``{--work-dir}/{--log-dir}/`` and writes ``acc1_plot.png`` and ``acc5_plot.png`` (training vs
validation accuracy) and ``loss_plot.png`` (training loss) there, as the official script does. The curve logs
are the ``"{epoch} {value}"`` lines of ``train_acc1.txt``, ``val_acc1.txt``, ``train_acc5.txt``,
``val_acc5.txt`` and ``loss_plot.txt``, in either format: plain numbers (``rlanet/train.py``) or the official
``str()`` of a tensor (``5 tensor(61.234, device='cuda:0')``, also ``tensor(61.2)`` of a CPU run). A folder
holding only our ``log.jsonl`` is read from that.

Fixed official defects: the values are parsed as numbers whatever their text (officially
``line.split('(')[1].split(',')[0]``, which fails on plain numbers and on CPU tensors), a missing or malformed
log stops with one message naming the file and line, and nothing waits on ``plt.show()`` (headless).
"""
import argparse
import json
import os
import re
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.plots import plot_curves, read_jsonl  # noqa: E402

__all__ = ["LOG_FILES", "PLOTS", "parse_value", "read_curve", "read_records", "plot_log_dir", "main"]

# official curve log -> key of the epoch record (same keys as rlanet/train.py's log.jsonl)
LOG_FILES = (("loss_plot.txt", "train_loss"), ("train_acc1.txt", "train_top1"), ("val_acc1.txt", "test_top1"),
             ("train_acc5.txt", "train_top5"), ("val_acc5.txt", "test_top5"))

# output PNG -> the panels of common.plots.plot_curves
PLOTS = (
    ("acc1_plot.png", (("Acc@1 (%)", (("train_top1", "training"), ("test_top1", "validation"))),)),
    ("acc5_plot.png", (("Acc@5 (%)", (("train_top5", "training"), ("test_top5", "validation"))),)),
    ("loss_plot.png", (("loss", (("train_loss", "training"),)),)),
)

_TENSOR = re.compile(r"^tensor\(\s*([^,)]+)")


class LogFormatError(ValueError):
    """A curve log line that is neither ``"{epoch} {number}"`` nor ``"{epoch} tensor(...)"``."""


def parse_value(text):
    """``'61.234'``, ``"tensor(61.234, device='cuda:0')"`` or ``'tensor(61.2)'`` -> 61.234 / 61.2."""
    text = text.strip()
    m = _TENSOR.match(text)
    return float(m.group(1) if m else text)


def read_curve(path):
    """[(epoch, value), ...] of one curve log (blank lines skipped)."""
    out = []
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            try:
                out.append((int(parts[0]), parse_value(parts[1])))
            except (ValueError, IndexError):
                raise LogFormatError(f"{path}, line {no}: expected '<epoch> <value>' (a number or "
                                     f"tensor(<value>, ...)), got {line.strip()!r}") from None
    return out


def read_records(log_dir):
    """One dict per epoch (``epoch``, ``train_loss``, ``train_top1``, ``test_top1``, ``train_top5``,
    ``test_top5``) from the official curve logs of ``log_dir``, else from its ``log.jsonl``."""
    present = [(name, key) for name, key in LOG_FILES if os.path.isfile(os.path.join(log_dir, name))]
    if not present:
        jsonl = os.path.join(log_dir, "log.jsonl")
        if os.path.isfile(jsonl):
            try:
                return read_jsonl(jsonl)
            except json.JSONDecodeError as err:
                raise LogFormatError(f"{jsonl}: not a JSON-lines log ({err})") from None
        raise FileNotFoundError(f"no curve logs in {log_dir!r}: expected {', '.join(n for n, _ in LOG_FILES)} "
                                f"(written by rlanet/train.py or the official train.py) or log.jsonl")
    by_epoch = {}
    for name, key in present:
        for epoch, value in read_curve(os.path.join(log_dir, name)):
            by_epoch.setdefault(epoch, {"epoch": epoch})[key] = value
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_log_dir(log_dir, out_dir=None):
    """Write the three official PNGs of ``log_dir`` into ``out_dir`` (default: ``log_dir``); returns
    {png path: matplotlib Figure} (its lines hold the plotted values). A PNG whose curves have no data is
    skipped."""
    records = read_records(log_dir)
    out_dir = out_dir or log_dir
    figures = {}
    for png, curves in PLOTS:
        keys = [k for _, series in curves for k, _ in series]
        if not any(k in r for r in records for k in keys):
            continue
        path = os.path.join(out_dir, png)
        figures[path] = plot_curves(records, path, title=os.path.basename(os.path.normpath(log_dir)), curves=curves)
    if not figures:
        raise LogFormatError(f"nothing to plot in {log_dir!r}: the logs hold no accuracy or loss values")
    return figures


def get_parser():
    p = argparse.ArgumentParser(description="RLA-Net learning curves as PNG")
    p.add_argument("--work-dir", default="work_dirs", type=str, help="the dir holding the run folders")
    p.add_argument("-ld", "--log-dir", default="rla_resnet50_", type=str, help="the run folder inside --work-dir")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    log_dir = os.path.join(args.work_dir, args.log_dir)
    if not os.path.isdir(log_dir):
        print(f"error: no such log folder: {log_dir!r} (--work-dir {args.work_dir!r}, -ld {args.log_dir!r})",
              file=sys.stderr)
        sys.exit(2)
    try:
        figures = plot_log_dir(log_dir)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for path in figures:
        print(f"saved {path}")
    return figures


if __name__ == "__main__":
    main()
