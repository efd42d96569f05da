"""Learning curves as a picture: every classification script draws its ``log.jsonl`` into ``log.png`` at
the end of a run (the official scripts plot ``log.eps`` with matplotlib; a PNG opens everywhere).

    python -m common.plots checkpoints/run/log.jsonl            # writes checkpoints/run/log.png

The ImageNet scripts of the pytorch/examples lineage (DLA, RLA-Net) also write the official curve logs
(``loss_plot.txt``, ``train_acc1.txt``, ..., one ``"{epoch} {value}"`` line per epoch); their readers and the
``acc1_plot.png`` / ``acc5_plot.png`` / ``loss_plot.png`` pictures of the official ``eval_visual.py`` are here
too (:func:`read_official_curve`, :func:`read_examples_records`, :func:`plot_examples_curves`), for both
papers' ``eval_visual.py`` and ``best.py``.
"""
import json
import os
import re
import sys

__all__ = ["read_jsonl", "plot_curves", "CURVES", "EXAMPLES_CURVES", "EXAMPLES_PLOTS", "LogFormatError",
           "parse_official_value", "read_official_curve", "read_examples_records", "plot_examples_curves",
           "best_of", "curves_parser", "run_on_log_dir", "eval_visual"]

# panel title -> [(record key, label)]; a panel is drawn when the log has at least one of its keys
CURVES = (
    ("loss", (("train_loss", "train"), ("test_loss", "test"))),
    ("top-1 accuracy (%)", (("train_top1", "train"), ("test_top1", "test"))),
    ("learning rate", (("lr", "lr"),)),
)


def read_jsonl(path):
    """The records of a JSON-lines log (one object per line; blank lines skipped)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(records, out_path, title=None, x_key="epoch", curves=CURVES):
    """Draw ``records`` (dicts with ``x_key`` and the keys of ``curves``) into ``out_path`` (PNG), one panel per
    curve group; returns the matplotlib Figure (closed after saving; its lines keep the plotted data)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(name, [(k, lbl) for k, lbl in series if any(k in r for r in records)]) for name, series in curves]
    panels = [(name, series) for name, series in panels if series]
    if not records or not panels:
        raise ValueError(f"nothing to plot: no records with any of "
                         f"{sorted(k for _, s in curves for k, _ in s)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (name, series) in zip(axes[0], panels):
        for key, label in series:
            pts = [(r[x_key], r[key]) for r in records if key in r and x_key in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        if len(series) > 1:
            ax.legend()
        if name == "learning rate":
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return fig


# ---------------------------------------------------------------- the official curve logs (pytorch/examples lineage)
#: curve log -> key of the epoch record (the keys of ``log.jsonl``); a script writes those its official one did:
#: RLA-Net these five, DLA also ``valloss_plot.txt`` (``test_loss``), DLA's train_pro also ``lr_plot.txt``
#: (``lr_end``: the LR after the epoch's last step)
EXAMPLES_CURVES = (("loss_plot.txt", "train_loss"), ("train_acc1.txt", "train_top1"),
                   ("train_acc5.txt", "train_top5"), ("val_acc1.txt", "test_top1"), ("val_acc5.txt", "test_top5"))
EXAMPLES_OPTIONAL = (("valloss_plot.txt", "test_loss"), ("lr_plot.txt", "lr_end"))

#: output PNG -> the panels of :func:`plot_curves` (a PNG whose curves have no data is skipped)
EXAMPLES_PLOTS = (
    ("acc1_plot.png", (("Acc@1 (%)", (("train_top1", "training"), ("test_top1", "validation"))),)),
    ("acc5_plot.png", (("Acc@5 (%)", (("train_top5", "training"), ("test_top5", "validation"))),)),
    ("loss_plot.png", (("loss", (("train_loss", "training"), ("test_loss", "validation"))),)),
    ("lr_plot.png", (("learning rate", (("lr_end", "lr"),)),)),
)

_TENSOR = re.compile(r"^tensor\(\s*([^,)]+)")


class LogFormatError(ValueError):
    """A curve log line that is neither ``"{epoch} {number}"`` nor ``"{epoch} tensor(...)"``."""


def parse_official_value(text):
    """``'61.234'``, ``"tensor(61.234, device='cuda:0')"`` (the official logs: ``str()`` of a CUDA tensor) or
    ``'tensor(61.2)'`` -> the number."""
    text = text.strip()
    m = _TENSOR.match(text)
    return float(m.group(1) if m else text)


def read_official_curve(path):
    """[(epoch, value), ...] of one curve log (blank lines skipped); a malformed line is one
    :class:`LogFormatError` naming the file and line."""
    out = []
    with open(path) as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            try:
                out.append((int(parts[0]), parse_official_value(parts[1])))
            except (ValueError, IndexError):
                raise LogFormatError(f"{path}, line {no}: expected '<epoch> <value>' (a number or "
                                     f"tensor(<value>, ...)), got {line.strip()!r}") from None
    return out


def read_examples_records(log_dir, files=EXAMPLES_CURVES + EXAMPLES_OPTIONAL):
    """One dict per epoch (``epoch`` and the record keys of ``files``) from the curve logs of ``log_dir``, else
    from its ``log.jsonl``."""
    present = [(name, key) for name, key in files if os.path.isfile(os.path.join(log_dir, name))]
    if not present:
        jsonl = os.path.join(log_dir, "log.jsonl")
        if os.path.isfile(jsonl):
            try:
                return read_jsonl(jsonl)
            except json.JSONDecodeError as err:
                raise LogFormatError(f"{jsonl}: not a JSON-lines log ({err})") from None
        raise FileNotFoundError(f"no curve logs in {log_dir!r}: expected {', '.join(n for n, _ in files[:5])} "
                                f"(the ImageNet training scripts write them) or log.jsonl")
    by_epoch = {}
    for name, key in present:
        for epoch, value in read_official_curve(os.path.join(log_dir, name)):
            by_epoch.setdefault(epoch, {"epoch": epoch})[key] = value
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_examples_curves(log_dir, out_dir=None, plots=EXAMPLES_PLOTS):
    """The official ``eval_visual.py`` pictures of ``log_dir`` (``acc1_plot.png``, ``acc5_plot.png``: training vs
    validation accuracy; ``loss_plot.png``: the losses; ``lr_plot.png`` where the LR was logged) written into
    ``out_dir`` (default ``log_dir``). Returns {png path: matplotlib Figure} (its lines hold the plotted values)."""
    records = read_examples_records(log_dir)
    out_dir = out_dir or log_dir
    figures = {}
    for png, curves in plots:
        keys = [k for _, series in curves for k, _ in series]
        if not any(k in r for r in records for k in keys):
            continue
        path = os.path.join(out_dir, png)
        figures[path] = plot_curves(records, path, title=os.path.basename(os.path.normpath(log_dir)), curves=curves)
    if not figures:
        raise LogFormatError(f"nothing to plot in {log_dir!r}: the logs hold no accuracy or loss values")
    return figures


def best_of(curve):
    """(value, epoch) of the highest value of [(epoch, value), ...]; the first epoch on a tie."""
    epoch, value = max(curve, key=lambda ev: (ev[1], -ev[0]))
    return value, epoch


def curves_parser(description, log_dir):
    """The flags of the official ``eval_visual.py`` / ``best.py``: ``--work-dir`` and ``-ld/--log-dir`` (the
    run folder inside it; the default is the paper's)."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--work-dir", default="work_dirs", type=str, help="the dir holding the run folders")
    p.add_argument("-ld", "--log-dir", default=log_dir, type=str, help="the run folder inside --work-dir")
    return p


def run_on_log_dir(args, action):
    """``action(log_dir)`` on ``{--work-dir}/{--log-dir}``; a missing folder or a missing / malformed log is one
    ``error:`` line on stderr and exit status 2."""
    log_dir = os.path.join(args.work_dir, args.log_dir)
    if not os.path.isdir(log_dir):
        print(f"error: no such log folder: {log_dir!r} (--work-dir {args.work_dir!r}, -ld {args.log_dir!r})",
              file=sys.stderr)
        sys.exit(2)
    try:
        return action(log_dir)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def eval_visual(log_dir):
    """The official ``eval_visual.py``: the PNGs of :func:`plot_examples_curves` in ``log_dir``, each path
    printed; returns {path: Figure}."""
    figures = plot_examples_curves(log_dir)
    for path in figures:
        print(f"saved {path}")
    return figures


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m common.plots", description="draw a log.jsonl as a PNG")
    p.add_argument("log", help="a log.jsonl written by a training script")
    p.add_argument("-o", "--out", default=None, help="output PNG (default: next to the log, log.png)")
    args = p.parse_args(argv)
    if not os.path.isfile(args.log):
        p.error(f"no such log: {args.log}")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.log)), "log.png")
    try:
        plot_curves(read_jsonl(args.log), out, title=os.path.basename(os.path.dirname(os.path.abspath(args.log))))
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: {args.log}: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
