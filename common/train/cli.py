"""The command-line entry of every training script: bad input ends in one ``error:`` line and exit status 2.

    if __name__ == "__main__":
        cli(main)          # main(argv) parses its own flags

Bad input is a missing or corrupt dataset, a refused / foreign / truncated / missing checkpoint, an unknown
architecture, or a bad config file or key; the message names the file, key or valid names, and the
traceback is not shown. The process group is torn down in every case.
"""
import os
import sys

from common import checkpoint as ckpt
from common import data as cdata
from common import distributed as D
from common.config import ConfigError
from common.registry import UnknownModelError

__all__ = ["BAD_INPUT", "cli", "nonfinite_exit"]

BAD_INPUT = (cdata.DatasetNotFoundError, cdata.DataFileError, ckpt.CheckpointError, UnknownModelError, ConfigError,
             FileNotFoundError)


def cli(main, argv=None, extra_errors=(), rank0_only=False):
    """Run ``main(argv)``; an error of :data:`BAD_INPUT` (or ``extra_errors``) prints ``error: <message>`` on
    stderr (on rank 0 only with ``rank0_only``) and exits with status 2."""
    try:
        main(argv)
    except BAD_INPUT + tuple(extra_errors) as err:
        if not rank0_only or D.get_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        D.cleanup()


def nonfinite_exit(err, last):
    """The ``SystemExit`` of a training loop stopped by a non-finite loss (``err``): its message, and the last
    good checkpoint ``last`` (a path, or None) when that file exists."""
    kept = last if last and os.path.isfile(last) else "(none written yet)"
    return SystemExit(f"error: {err}\nlast good checkpoint: {kept}")
