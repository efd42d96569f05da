"""Learning curves drawn from a JSON-lines log."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from common.plots import plot_curves, read_jsonl

RECORDS = [{"epoch": e, "lr": 0.1 * 0.1 ** (e >= 3), "train_loss": 2.0 / e, "test_loss": 2.2 / e,
            "train_top1": 10.0 * e, "test_top1": 9.0 * e} for e in range(1, 6)]


def test_plot_curves_draws_the_logged_values(tmp_path):
    fig = plot_curves(RECORDS, tmp_path / "log.png", title="run")
    loss, acc, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss", "top-1 accuracy (%)", "learning rate"]
    (train, test) = loss.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5]
    assert list(test.get_ydata()) == pytest.approx([2.2 / e for e in range(1, 6)])
    assert list(acc.get_lines()[1].get_ydata()) == pytest.approx([9.0 * e for e in range(1, 6)])
    assert list(lr.get_lines()[0].get_ydata()) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.01])
    img = Image.open(tmp_path / "log.png")
    assert img.format == "PNG" and img.size == (1350, 360)


def test_only_the_panels_the_log_has(tmp_path):
    fig = plot_curves([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}], tmp_path / "a.png")
    assert [ax.get_title() for ax in fig.axes] == ["loss"]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves([{"epoch": 1}], tmp_path / "b.png")


def test_command_line(tmp_path):
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    assert read_jsonl(log) == RECORDS
    r = subprocess.run([sys.executable, "-m", "common.plots", str(log)], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "run" / "log.png").exists()
    log.write_text("{not json\n")
    r = subprocess.run([sys.executable, "-m", "common.plots", str(log)], capture_output=True, text=True)
    assert r.returncode == 2 and "log.jsonl" in r.stderr and "Traceback" not in r.stderr
