"""Helpers of ``benchmarks/gpu_check.sh``: the environment record and the final report.

    python benchmarks/gpu_report.py environment --out DIR     # DIR/environment.json (card, driver, versions)
    python benchmarks/gpu_report.py report --out DIR --steps DIR/steps.tsv [--seconds N] [--mode gpu|dry-run]

``report`` writes ``DIR/report.md`` and ``DIR/report.json``: the environment, one row per step (status, exit
code, seconds), the markdown tables the steps printed (throughput tables, the deformable-attention timing
table and its checks) and the raw throughput results (``DIR/*.json`` written by ``throughput.py --json``).
Its exit status is 0 when every step passed or was skipped, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

TAIL_LINES = 25


def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as exc:  # no nvidia-smi on a CPU machine
        return f"n/a ({type(exc).__name__})"


def environment():
    info = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_runtime"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["device"] = torch.cuda.get_device_name(0)
            info["capability"] = f"{props.major}.{props.minor}"
            info["memory_gb"] = round(props.total_memory / 2 ** 30, 1)
            info["cudnn"] = torch.backends.cudnn.version()
        else:
            info["device"] = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    except Exception as exc:
        info["torch"] = f"import failed: {exc}"
    for mod in ("triton", "timm", "torchvision", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    info["nvidia_smi"] = smi
    if smi and not smi.startswith("n/a") and "," in smi:
        info["driver"] = smi.splitlines()[0].split(",")[1].strip()
    return info


def _read_steps(path):
    steps = []
    for line in Path(path).read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 6:
            continue
        name, group, status, rc, seconds, cmd = parts[:6]
        steps.append({"name": name, "group": group, "status": status, "rc": None if rc == "-" else int(rc),
                      "seconds": int(seconds), "command": cmd})
    return steps


def _tables(text):
    """The markdown tables (runs of lines starting with '|') and fixed-width tables of msda.py in a log."""
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append("\n".join(cur))
            cur = []
    if cur:
        blocks.append("\n".join(cur))
    return blocks


def report(out, steps_path, seconds=None, mode="gpu"):
    out = Path(out)
    env_path = out / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    steps = _read_steps(steps_path)
    raw = {}
    for path in sorted(out.glob("*.json")):
        if path.name in ("environment.json", "report.json"):
            continue
        try:
            raw[path.stem] = json.loads(path.read_text())
        except ValueError as exc:
            raw[path.stem] = f"unreadable: {exc}"
    md = [f"# GPU check ({mode})", ""]
    md.append(f"Device: {env.get('device', '?')}; driver {env.get('driver', 'n/a')}; torch {env.get('torch')} "
              f"(CUDA {env.get('cuda_runtime')}, cuDNN {env.get('cudnn', 'n/a')}); triton {env.get('triton')}; "
              f"timm {env.get('timm')}; python {env.get('python')}"
              + (f"; total {seconds} s" if seconds is not None else ""))
    md += ["", "| step | status | exit | seconds |", "|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {'' if s['rc'] is None else s['rc']} | {s['seconds']} |"
           for s in steps]
    for s in steps:
        log = out / "logs" / f"{s['name']}.log"
        s["log"] = str(log) if log.exists() else None
        if not log.exists():
            continue
        text = log.read_text(errors="replace")
        md += ["", f"## {s['name']} ({s['status']})", "", f"`{s['command']}`", ""]
        if s["group"] == "msda":  # fixed-width table: keep the whole (short) output
            md += ["```", text.strip()[-6000:], "```"]
            continue
        tables = _tables(text)
        for t in tables:
            md += [t, ""]
        if s["status"] != "passed" or not tables:
            tail = "\n".join(text.strip().splitlines()[-TAIL_LINES:])
            md += ["```", tail, "```"]
            s["log_tail"] = tail
    (out / "report.md").write_text("\n".join(md) + "\n")
    ok = all(s["status"] in ("passed", "skipped") for s in steps)
    (out / "report.json").write_text(json.dumps({"mode": mode, "seconds": seconds, "ok": ok, "environment": env,
                                                 "steps": steps, "results": raw}, indent=1))
    return 0 if ok else 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("environment")
    e.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--out", required=True)
    r.add_argument("--steps", required=True)
    r.add_argument("--seconds", type=int, default=None)
    r.add_argument("--mode", default="gpu")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.cmd == "environment":
        out.mkdir(parents=True, exist_ok=True)
        info = environment()
        (out / "environment.json").write_text(json.dumps(info, indent=1))
        print(json.dumps(info))
        return 0
    if not Path(args.steps).is_file():
        print(f"gpu_report.py: no steps file {args.steps}", file=sys.stderr)
        return 2
    return report(out, args.steps, args.seconds, args.mode)


if __name__ == "__main__":
    sys.exit(main())
