"""Run logs: the console set-up, the official tab-separated ``log.txt``, a JSON-lines log, and TensorBoard scalars.

:func:`setup_logging` is the one console set-up of every script: rank 0 prints (and copies the lines into a file
when given a folder), the other ranks stay quiet unless asked (``verbose_all_ranks=True`` or the environment
variable ``LAYERZOO_LOG_ALL_RANKS=1``). It configures the standard :mod:`logging` module, so the messages that
library code sends to ``logging.getLogger(__name__)`` (weight-loading reports, warnings) reach the console of
rank 0, and it returns a ``print``-like ``log`` callable for the scripts' official output lines, which keep their
exact text. The file classes write on the main process only and are no-ops elsewhere.
"""
import json
import logging
import os
import sys

from .distributed import is_main_process

__all__ = ["setup_logging", "close_logging", "log_load_report", "ALL_RANKS_ENV", "OfficialLogger", "JsonlLogger", "TBWriter"]

ALL_RANKS_ENV = "LAYERZOO_LOG_ALL_RANKS"
_PRINT_END = "layerzoo_end"  # LogRecord attribute: the ``end`` of a ``log(...)`` line


class _ConsoleHandler(logging.Handler):
    """Writes to the *current* ``sys.stdout`` (``sys.stderr`` from WARNING up), so redirected or captured
    streams are honoured; a ``log(...)`` record ends with its own ``end``, other records with a newline."""

    def emit(self, record):
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + getattr(record, _PRINT_END, "\n"))
            stream.flush()
        except Exception:  # pragma: no cover - broken stream
            self.handleError(record)


class _FileHandler(logging.FileHandler):
    """Appends to a file, opened (and its folder made) at the first message; same line endings as the console."""

    def __init__(self, path):
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def _open(self):
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()

    def emit(self, record):
        self.terminator = getattr(record, _PRINT_END, "\n")
        super().emit(record)


class _Formatter(logging.Formatter):
    """``log(...)`` lines and INFO messages as they are; ``warning: ...`` / ``error: ...`` above INFO;
    ``[rank r] `` in front on the other ranks when they are asked to print."""

    def __init__(self, prefix="", fmt=None, datefmt=None):
        super().__init__(fmt or "%(message)s", datefmt)
        self.prefix = prefix
        self.plain = fmt is None

    def format(self, record):
        text = super().format(record)
        if self.plain and record.levelno >= logging.WARNING and not hasattr(record, _PRINT_END):
            text = f"{record.levelname.lower()}: {text}"
        return self.prefix + text


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _default_rank():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def setup_logging(output_dir=None, rank=None, name="layerzoo", verbose_all_ranks=None, filename="console.log",
                  level=logging.INFO, fmt=None, datefmt=None, file_all_ranks=False):
    """Set up the console of this process and return ``log``, a ``print``-like callable.

    * rank 0 (``rank=None``: the initialised process group's rank, else ``$RANK``, else 0): ``log(...)`` and
      every ``logging`` message at ``level`` and above are printed (WARNING and up to stderr, as
      ``warning: ...``); with ``output_dir`` they are also appended to ``output_dir/filename`` (opened at the
      first message, so a run that stops before printing leaves no file).
    * other ranks: quiet (``log`` does nothing; only ERROR messages are shown), unless ``verbose_all_ranks``
      (``None``: the environment variable ``LAYERZOO_LOG_ALL_RANKS``), then they print with a ``[rank r] `` prefix.

    ``log(*values, sep=" ", end="\\n", file=None, flush=False)`` writes exactly what ``print`` would (the
    official log lines keep their format); ``file=`` other than stdout bypasses the set-up and prints there.
    ``log.logger`` is the ``logging.Logger`` called ``name``, ``log.enabled`` tells whether this rank prints.
    ``fmt`` / ``datefmt``: a :class:`logging.Formatter` format for every line (e.g. Swin's
    ``[%(asctime)s %(name)s] (%(filename)s %(lineno)d): %(levelname)s %(message)s``; ``%(filename)s`` /
    ``%(lineno)d`` name the caller of ``log``); default: the message alone.
    ``file_all_ranks=True`` (Swin's logger: ``log_rank{r}.txt`` on every process): every rank appends its own
    messages to ``output_dir/filename`` (give each rank its own name, e.g. ``f"log_rank{rank}.txt"``), while
    the console stays as above (rank 0 only, unless ``verbose_all_ranks``); the file lines carry no rank prefix.
    The handlers are installed on the root logger (so ``logging.getLogger(__name__)`` of every module reaches
    them) and replace those of an earlier call; other handlers are left alone.
    """
    rank = _default_rank() if rank is None else int(rank)
    if verbose_all_ranks is None:
        verbose_all_ranks = _env_flag(ALL_RANKS_ENV)
    enabled = rank == 0 or bool(verbose_all_ranks)
    close_logging()
    root = logging.getLogger()
    formatter = _Formatter("" if rank == 0 else f"[rank {rank}] ", fmt, datefmt)
    console = _ConsoleHandler()
    console.setLevel(level if enabled else logging.ERROR)
    console.setFormatter(formatter)
    handlers = [console]
    writes_file = output_dir is not None and (enabled or file_all_ranks)
    if writes_file:
        fh = _FileHandler(os.path.join(os.path.abspath(os.fspath(output_dir)), filename))
        fh.setLevel(level)
        fh.setFormatter(_Formatter("", fmt, datefmt) if file_all_ranks else formatter)
        handlers.append(fh)
    for h in handlers:
        h._layerzoo = True
        root.addHandler(h)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    logger = logging.getLogger(name)

    def log(*values, sep=" ", end="\n", file=None, flush=False):
        if not (enabled or writes_file):
            return
        if file is not None and file is not sys.stdout:
            if not enabled:
                return
            print(*values, sep=sep, end=end, file=file, flush=flush)
            return
        text = (" " if sep is None else sep).join(str(v) for v in values)
        logger.info("%s", text, extra={_PRINT_END: "\n" if end is None else end}, stacklevel=2)

    log.logger = logger
    log.enabled = enabled
    log.rank = rank
    return log


def close_logging():
    """Remove (and close) the handlers installed by :func:`setup_logging`; other handlers are left alone."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_layerzoo", False)]:
        root.removeHandler(h)
        h.close()


def log_load_report(result, source, target="model", logger=None, ignore=(), max_list=20):
    """Report what a non-strict ``load_state_dict`` left out (its ``missing_keys`` / ``unexpected_keys``),
    at INFO on ``logger`` (default: this module's), so it reaches the console of rank 0 after
    :func:`setup_logging`. Keys ending with one of ``ignore`` are not reported. Returns ``(missing, unexpected)``."""
    logger = logger or logging.getLogger(__name__)
    ignore = tuple(ignore)
    missing = [k for k in result.missing_keys if not (ignore and k.endswith(ignore))]
    unexpected = [k for k in result.unexpected_keys if not (ignore and k.endswith(ignore))]

    def _names(keys):
        shown = ", ".join(keys[:max_list])
        return shown + (f", ... ({len(keys) - max_list} more)" if len(keys) > max_list else "")

    parts = [f"loaded {source} into {target}"]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_names(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_names(unexpected)}")
    if not missing and not unexpected:
        parts.append("all keys matched")
    logger.info("; ".join(parts))
    return missing, unexpected


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


def _cell(value):
    """A ``log.txt`` entry: an integer (the epoch, the seed) as itself, any other number as ``{:.6f}``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.6f}"


class OfficialLogger:
    """``log.txt`` as pytorch-classification writes it: a header of names, then one row per epoch,
    each entry followed by a tab, values as ``{:.6f}`` (integers such as the epoch as integers: officially
    ``1.000000``).

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
        self.file.write("".join(f"{_cell(v)}\t" for v in values) + "\n")
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
