"""benchmarks/gpu_check.sh: the report of recorded steps (failures kept, not fatal) and the CPU smoke run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_report  # noqa: E402


def test_report_keeps_failures_and_tables(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tp.log").write_text("warming up\n| model | img/s |\n|---|---|\n| a | 12.5 |\ndone\n")
    (tmp_path / "logs" / "bad.log").write_text("Traceback (most recent call last):\nRuntimeError: CUDA oom\n")
    (tmp_path / "tp.json").write_text(json.dumps([{"model": "a", "train": 12.5}]))
    (tmp_path / "environment.json").write_text(json.dumps({"device": "Card X", "driver": "1.2", "torch": "t"}))
    steps = tmp_path / "steps.tsv"
    steps.write_text("tp\tthroughput\tpassed\t0\t3\tpython tp.py\n"
                     "bad\ttests\tfailed\t1\t2\tpytest -m gpu\n"
                     "late\tmsda\tskipped (time budget)\t-\t0\tpython msda.py\n")
    assert gpu_report.report(tmp_path, steps, seconds=5, mode="gpu") == 1
    md = (tmp_path / "report.md").read_text()
    assert "| tp | passed | 0 | 3 |" in md and "| bad | failed | 1 | 2 |" in md and "skipped (time budget)" in md
    assert "| a | 12.5 |" in md and "RuntimeError: CUDA oom" in md and "Card X" in md
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["ok"] is False and rep["results"]["tp"][0]["train"] == 12.5
    assert [s["status"] for s in rep["steps"]] == ["passed", "failed", "skipped (time budget)"]
    steps.write_text("tp\tthroughput\tpassed\t0\t3\tpython tp.py\n")
    assert gpu_report.report(tmp_path, steps) == 0


def test_bad_argument_is_one_message(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True,
                          text=True, env=dict(os.environ, OUT=str(tmp_path)))
    assert proc.returncode == 2 and "unknown argument '--fast'" in proc.stderr


@pytest.mark.slow
def test_dry_run_on_cpu_writes_the_report(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "r"), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["mode"] == "dry-run" and rep["ok"]
    assert [s["name"] for s in rep["steps"]] == ["environment", "tests_gpu", "msda", "throughput_fp32"]
    assert "dianet:dia_resnet164" in (tmp_path / "r" / "report.md").read_text()
