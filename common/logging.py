"""Run logs: the official tab-separated ``log.txt``, a JSON-lines log, and TensorBoard scalars.

Only the main process writes; the classes are no-ops elsewhere.
"""
import json
import os

from .distributed import is_main_process

__all__ = ["OfficialLogger", "JsonlLogger", "TBWriter"]


def _keep_rows(path, header_lines, keep_rows):
    """Rewrite ``path`` as its header lines plus its first ``keep_rows`` rows (all rows when None);
    return the header lines."""
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    header, rows = lines[:header_lines], lines[header_lines:]
    if keep_rows is not None:
        rows = rows[:keep_rows]
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in header + rows))
    return header


class OfficialLogger:
    """``log.txt`` as pytorch-classification writes it: a header of names, then one row per epoch,
    each entry followed by a tab, values as ``{:.6f}``.

    ``resume=True`` appends to an existing file; ``keep_rows=n`` first truncates it to its first ``n`` rows,
    so a run resumed from the checkpoint of epoch ``n`` never duplicates a row written after that checkpoint.
    """

    def __init__(self, path, title="", resume=False, keep_rows=None):
        self.path = path
        self.title = title
        self.names = []
        self.enabled = is_main_process()
        self.file = None
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume and os.path.isfile(path):
            header = _keep_rows(path, 1, keep_rows)
            if header:
                self.names = [n for n in header[0].split("\t") if n]
            self.file = open(path, "a")
        else:
            self.file = open(path, "w")

    def set_names(self, names):
        if not self.enabled or self.names:
            self.names = self.names or list(names)
            return
        self.names = list(names)
        self.file.write("".join(f"{n}\t" for n in names) + "\n")
        self.file.flush()

    def append(self, values):
        if not self.enabled:
            return
        if len(values) != len(self.names):
            raise ValueError(f"expected {len(self.names)} values, got {len(values)}")
        self.file.write("".join(f"{float(v):.6f}\t" for v in values) + "\n")
        self.file.flush()

    def read_rows(self):
        with open(self.path) as f:
            lines = f.read().splitlines()[1:]
        return [[float(x) for x in line.split("\t") if x] for line in lines if line.strip()]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class JsonlLogger:
    """One JSON object per line; ``keep_rows`` truncates on resume like :class:`OfficialLogger`."""

    def __init__(self, path, resume=False, keep_rows=None):
        self.path = path
        self.enabled = is_main_process()
        if not self.enabled:
            return
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if resume and os.path.isfile(path):
            _keep_rows(path, 0, keep_rows)
        else:
            open(path, "w").close()

    def log(self, record):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")


class TBWriter:
    """TensorBoard scalars (``tensorboard`` is a dependency; silently disabled if it cannot be imported)."""

    def __init__(self, log_dir):
        self.writer = None
        if not is_main_process():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # pragma: no cover - tensorboard missing
            return
        self.writer = SummaryWriter(log_dir=log_dir)

    def scalars(self, values, step):
        if self.writer is None:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
