"""Best validation accuracy of a DLA ImageNet run — the official ``imagenet/best.py`` flags and outputs.

    python dla/best.py --work-dir work_dirs -ld resnet50_dla_l_

Reads the curve logs of ``{--work-dir}/{--log-dir}/`` (``train_acc1/5.txt``, ``val_acc1/5.txt``,
``loss_plot.txt`` and, when present, ``valloss_plot.txt``; plain numbers or the official
``tensor(..., device='cuda:0')`` text) and writes there, as officially:

* ``log.csv``: ``epoch,train_acc1,train_acc5,val_acc1,val_acc5,train_loss[,val_loss]``, one row per epoch;
* ``log.txt``: ``{e} train_Acc@1 {:.3f} train_Acc@5 {:.3f} Acc@1 {:.3f} Acc@5 {:.3f} train_Loss {:.4f}
  [Loss {:.4f}]`` per epoch;
* ``best.txt``: ``* best Top-1 at epoch {e}: Acc@1: {:.3f}, Acc@5: {:.3f}, Err@1: {:.3f}, Err@5: {:.3f}`` and the
  same line for the best Top-5 epoch (the first epoch on a tie), both also printed.

Fixed official defects: the default ``-ld`` is the folder of ``train.py -a resnet50_dla_l`` (officially MRLA's
``resnet50_mrlal_``); plain-number logs parse; a missing or malformed log, or logs of different lengths, is one
message naming the file; no pandas needed.
"""
import csv
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import plots  # noqa: E402
from dla.eval_visual import get_parser as _parser  # noqa: E402

__all__ = ["COLUMNS", "read_table", "best_lines", "write_logs", "get_parser", "main"]

#: log.csv columns -> curve log
COLUMNS = (("train_acc1", "train_acc1.txt"), ("train_acc5", "train_acc5.txt"), ("val_acc1", "val_acc1.txt"),
           ("val_acc5", "val_acc5.txt"), ("train_loss", "loss_plot.txt"), ("val_loss", "valloss_plot.txt"))


def get_parser():
    return _parser("Clear the DLA logs and select the best epoch")


def read_table(log_dir):
    """[{'epoch': e, column: value, ...}, ...] of the curve logs (``val_loss`` only where its log exists)."""
    cols = [(c, n) for c, n in COLUMNS if c != "val_loss" or os.path.isfile(os.path.join(log_dir, n))]
    curves = {c: plots.read_official_curve(os.path.join(log_dir, n)) for c, n in cols}
    epochs = [e for e, _ in curves["val_acc1"]]
    if not epochs:
        raise ValueError(f"{os.path.join(log_dir, 'val_acc1.txt')} holds no epochs")
    for (c, n) in cols:
        if [e for e, _ in curves[c]] != epochs:
            raise ValueError(f"{os.path.join(log_dir, n)}: its epochs differ from val_acc1.txt's "
                             f"({len(curves[c])} lines vs {len(epochs)})")
    return [dict(epoch=e, **{c: curves[c][i][1] for c, _ in cols}) for i, e in enumerate(epochs)]


def _best_line(what, row):
    return (f"* best {what} at epoch {row['epoch']}: Acc@1: {row['val_acc1']:.3f}, Acc@5: {row['val_acc5']:.3f}, "
            f"Err@1: {100 - row['val_acc1']:.3f}, Err@5: {100 - row['val_acc5']:.3f}")


def best_lines(rows):
    """The two lines of ``best.txt``: the epochs of the highest val Acc@1 and of the highest val Acc@5."""
    out = []
    for what, key in (("Top-1", "val_acc1"), ("Top-5", "val_acc5")):
        _, epoch = plots.best_of([(r["epoch"], r[key]) for r in rows])
        out.append(_best_line(what, next(r for r in rows if r["epoch"] == epoch)))
    return out


def write_logs(log_dir):
    """``log.csv``, ``log.txt`` and ``best.txt`` in ``log_dir``; prints and returns the best lines."""
    rows = read_table(log_dir)
    names = ["epoch"] + [c for c, _ in COLUMNS if c in rows[0]]
    with open(os.path.join(log_dir, "log.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(log_dir, "log.txt"), "w") as f:
        for r in rows:
            f.write(f"{r['epoch']} train_Acc@1 {r['train_acc1']:.3f} train_Acc@5 {r['train_acc5']:.3f} "
                    f"Acc@1 {r['val_acc1']:.3f} Acc@5 {r['val_acc5']:.3f} train_Loss {r['train_loss']:.4f}"
                    + (f" Loss {r['val_loss']:.4f}" if "val_loss" in r else "") + " \n")
    lines = best_lines(rows)
    with open(os.path.join(log_dir, "best.txt"), "w") as f:
        f.write("".join(line + " \n" for line in lines))
    print("-" * 80)
    for line in lines:
        print(line)
        print("-" * 80)
    return lines


def main(argv=None):
    return plots.run_on_log_dir(get_parser().parse_args(argv), write_logs)


if __name__ == "__main__":
    main()
