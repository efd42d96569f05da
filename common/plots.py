"""Learning curves as a picture: every classification script draws its ``log.jsonl`` into ``log.png`` at
the end of a run (the official scripts plot ``log.eps`` with matplotlib; a PNG opens everywhere).

    python -m common.plots checkpoints/run/log.jsonl            # writes checkpoints/run/log.png
"""
import json
import os
import sys

__all__ = ["read_jsonl", "plot_curves", "CURVES"]

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
