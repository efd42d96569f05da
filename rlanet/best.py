"""Best validation accuracy of an RLA-Net run — the official ``best.py`` flags and output.

    python rlanet/best.py --work-dir work_dirs -ld rla_resnet50_

Reads ``val_acc1.txt`` and ``val_acc5.txt`` of ``{--work-dir}/{--log-dir}/`` (plain numbers or the official
``tensor(..., device='cuda:0')`` text, as ``eval_visual.py`` does), takes the maximum of each separately with its
epoch (the first epoch on a tie), and writes ``best.txt`` there::

    Acc@1:{acc1} epoch:{epoch1}
    Acc@5:{acc5} epoch:{epoch5}
    Err@1:{100 - acc1}
    Err@5:{100 - acc5}

printing the same lines. Fixed official defects: logs of a CPU run (and our plain numbers) parse; a missing or
malformed log stops with one message naming the file.
"""
import os
import sys

if __package__ in (None, ""):  # run as a file from a checkout that is not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import plots  # noqa: E402
from common.plots import best_of, read_official_curve as read_curve  # noqa: E402
from rlanet.eval_visual import get_parser  # noqa: E402  (the same flags as eval_visual.py)

__all__ = ["best_of", "best_lines", "write_best", "main"]


def best_lines(log_dir):
    out = {}
    for k in ("1", "5"):
        path = os.path.join(log_dir, f"val_acc{k}.txt")
        curve = read_curve(path)
        if not curve:
            raise ValueError(f"{path} holds no epochs")
        out[k] = best_of(curve)
    (a1, e1), (a5, e5) = out["1"], out["5"]
    return [f"Acc@1:{a1} epoch:{e1}", f"Acc@5:{a5} epoch:{e5}", f"Err@1:{100 - a1}", f"Err@5:{100 - a5}"]


def write_best(log_dir):
    """``best.txt`` in ``log_dir``, its lines printed; returns them."""
    lines = best_lines(log_dir)
    with open(os.path.join(log_dir, "best.txt"), "w") as f:
        f.write("".join(line + "\n" for line in lines))
    for line in lines:
        print(line)
    return lines


def main(argv=None):
    return plots.run_on_log_dir(get_parser().parse_args(argv), write_best)


if __name__ == "__main__":
    main()
