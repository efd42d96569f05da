#!/usr/bin/env python
"""Training / inference throughput of layerzoo models against a torchvision ResNet-50 baseline.

    python benchmarks/throughput.py --models dianet:dia_resnet164 dianet:dia_wrn52_4 \\
        [--batch 128 --img-size 32] [--compile] [--device cuda|cpu] [--steps 30 --warmup 10]

Model names are ``paper:name``. ``paper`` is a layerzoo package (``dianet``, ...) exposing
``create_model(name, **kwargs)``, or ``torchvision`` / ``timm``. A few paper models have
aliases (see ``ALIASES``); anything else is passed to ``create_model`` with ``--kwargs``.

Harness (same as the official anchors): random input and labels, ``SGD(lr=1e-3,
momentum=0.9)``, cross-entropy, ``--warmup`` untimed steps then the median of ``--steps``
individually timed steps (CUDA events on GPU, ``perf_counter`` on CPU),
``cudnn.benchmark=True``. Precisions: ``fp32``, and ``bf16`` = ``torch.autocast(bfloat16)``
with model and input in ``channels_last``. Peak memory: ``torch.cuda.max_memory_allocated``
over the timed steps on GPU; on CPU the peak resident set size during the timed steps minus
the RSS before the model was built (a rough figure: the allocator keeps freed memory).
"""
import argparse
import gc
import importlib
import json
import math
import os
import statistics
import sys
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# paper:name -> (module, constructor name, constructor kwargs): every paper's headline variants, read from
# its registry's table (``<paper>.variants(paper=True)``).
PAPERS = ("dianet", "rlanet")


def _aliases(papers=PAPERS):
    out = {}
    for paper in papers:
        for v in importlib.import_module(paper).variants(paper=True):
            out[f"{paper}:{v.name}"] = (paper, v.model, v.build_kwargs())
    return out


ALIASES = _aliases()

# Official implementations on one H100 (torch 2.11, CUDA 13), same harness as this script.
# key -> (batch, img_size, train fp32 img/s, train bf16 img/s, eval bf16 img/s, peak mem fp32 GB)
ANCHORS = {
    "torchvision:resnet50": (64, 224, 1703, 3342, None, 5.5),
    "timm:resnet50": (64, 224, 1688, 2209, None, 5.5),
    "timm:swin_tiny_patch4_window7_224": (128, 224, 933, 1950, None, 13.2),
    "official resnet50_dla_l": (64, 224, 481, 460, 1348, 11.3),
    "official rla_resnet50": (64, 224, 1332, 2105, 7609, 7.2),
    "official rla_mobilenetv2": (128, 224, 1605, 3239, 11760, 12.1),
    "official dwnet_tiny": (128, 224, 1023, 2923, 8936, 12.1),
    "dianet:dia_resnet164": (128, 32, 917, 637, 1702, 4.2),
    "official dla_b (depth 110, CIFAR-100)": (128, 32, 150, 137, 650, 12.4),
    "official dla_l (depth 110, CIFAR-100)": (128, 32, 690, 474, 2077, 4.9),
}
ANCHOR_DEVICE = "1x H100 80GB"


# ------------------------------------------------------------------------------------------
# Model resolution
# ------------------------------------------------------------------------------------------
def build_model(spec, kwargs=None):
    """``paper:name`` -> (model, description)."""
    kwargs = dict(kwargs or {})
    if spec in ALIASES:
        module, name, base = ALIASES[spec]
        merged = {**base, **kwargs}
        model = importlib.import_module(module).create_model(name, **merged)
        return model, f"{module}.create_model({name!r}, {_fmt_kwargs(merged)})"
    if ":" not in spec:
        raise SystemExit(f"model {spec!r}: expected 'paper:name' (e.g. dianet:dia_resnet164); "
                         f"aliases: {', '.join(sorted(ALIASES))}")
    paper, name = spec.split(":", 1)
    if paper == "torchvision":
        import torchvision

        model = torchvision.models.get_model(name, weights=None, **kwargs)
    elif paper == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, **kwargs)
    else:
        model = importlib.import_module(paper).create_model(name, **kwargs)
    return model, f"{paper}:{name}({_fmt_kwargs(kwargs)})"


def _fmt_kwargs(kw):
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


# ------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------
class _RssSampler:
    """Peak resident set size (bytes) seen by a background thread while active."""

    def __init__(self, interval=0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = None

    @staticmethod
    def current():
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def _timed_steps(step, n_warmup, n_steps, device):
    for _ in range(n_warmup):
        step()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(n_steps)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in events]
    else:
        for _ in range(n_steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(spec, kwargs, batch, img_size, precision, device, args):
    """Returns a dict with train/eval img/s and peak memory (GB) for one model/precision."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    rss0 = _RssSampler.current()
    torch.manual_seed(0)
    model, desc = build_model(spec, kwargs)
    n_params = sum(p.numel() for p in model.parameters())
    bf16 = precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt)
    with torch.no_grad():
        probe = model.eval()(torch.zeros(1, 3, img_size, img_size, device=device))
    num_classes = probe.shape[-1]
    x = torch.randn(batch, 3, img_size, img_size, device=device).to(memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), device=device)
    run = torch.compile(model) if args.compile else model
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else (
        lambda: torch.autocast(device.type, enabled=False))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(run(x), y)
        loss.backward()
        opt.step()

    def eval_step():
        with torch.no_grad(), autocast():
            run(x)

    model.train()
    for _ in range(args.warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t_train = _timed_steps(train_step, 0, args.steps, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        with _RssSampler() as sampler:
            t_train = _timed_steps(train_step, 0, args.steps, device)
        peak = (sampler.peak - rss0) / 2**30
    model.eval()
    t_eval = _timed_steps(eval_step, args.warmup, args.steps, device)
    del model, run, opt, x, y
    return dict(model=spec, desc=desc, params=n_params, batch=batch, img_size=img_size,
                precision=precision, train_ips=batch / t_train, eval_ips=batch / t_eval,
                peak_gb=peak)


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------
def _anchor(spec, precision, batch, img_size, what):
    a = ANCHORS.get(spec)
    if a is None or (a[0], a[1]) != (batch, img_size):
        return None
    _, _, tr32, tr16, ev16, mem32 = a
    return {("train", "fp32"): tr32, ("train", "bf16"): tr16, ("eval", "bf16"): ev16,
            ("mem", "fp32"): mem32}.get((what, precision))


def _num(v, fmt="{:.1f}"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ratio(a, b):
    return None if a is None or not b else a / b


def markdown_table(results, baseline, device, compiled):
    on_gpu = device.type == "cuda"
    base = {r["precision"]: r for r in results if r["model"] == baseline}
    head = ("| model | params | batch @ res | precision | train img/s | eval img/s | "
            "peak mem GB | train × baseline | eval × baseline | official train img/s | "
            "train × official | official eval img/s | eval × official |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | | | {r['precision']} | error: {r['error']} |"
                         + " |" * 8)
            continue
        b = base.get(r["precision"])
        at = _anchor(r["model"], r["precision"], r["batch"], r["img_size"], "train") if on_gpu else None
        ae = _anchor(r["model"], r["precision"], r["batch"], r["img_size"], "eval") if on_gpu else None
        prec = r["precision"] + (" +compile" if compiled else "")
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['batch']} @ {r['img_size']} | {prec} | "
            f"{_num(r['train_ips'])} | {_num(r['eval_ips'])} | {_num(r['peak_gb'], '{:.2f}')} | "
            f"{_num(_ratio(r['train_ips'], b and b['train_ips']), '{:.2f}')} | "
            f"{_num(_ratio(r['eval_ips'], b and b['eval_ips']), '{:.2f}')} | "
            f"{_num(at, '{:.0f}')} | {_num(_ratio(r['train_ips'], at), '{:.2f}')} | "
            f"{_num(ae, '{:.0f}')} | {_num(_ratio(r['eval_ips'], ae), '{:.2f}')} |")
    return "\n".join(lines)


_RESULT_TAG = "THROUGHPUT_RESULT "


def _run_job(spec, kw, batch, size, precision, device, args):
    try:
        return measure(spec, kw, batch, size, precision, device, args)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # OOM, bad name/kwargs
        msg = (str(exc).splitlines() or [type(exc).__name__])[0]
        return dict(model=spec, precision=precision, error=msg[:100])


def _run_job_subprocess(spec, kw, batch, size, precision, args):
    """One model and precision per process (as the official anchors were measured), so that
    peak memory is not polluted by earlier models."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--no-baseline",
           "--models", spec, "--kwargs", json.dumps(kw), "--batch", str(batch),
           "--img-size", str(size), "--precisions", precision, "--device", args.device,
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.compile:
        cmd.append("--compile")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG):])
    return dict(model=spec, precision=precision, error=f"worker exited with code {proc.returncode}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="paper:name (or an alias: "
                   + ", ".join(sorted(ALIASES)) + ")")
    p.add_argument("--kwargs", default="{}", help="JSON dict of constructor kwargs applied to "
                   "every model given (overrides alias defaults)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--baseline", default="torchvision:resnet50")
    p.add_argument("--baseline-batch", type=int, default=64)
    p.add_argument("--baseline-img-size", type=int, default=224)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--in-process", action="store_true",
                   help="measure every model in this process (default: one subprocess each)")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    kwargs = json.loads(args.kwargs)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._worker:
        args.precisions = args.precisions[:1]
    jobs = [] if args.no_baseline else [(args.baseline, {}, args.baseline_batch, args.baseline_img_size)]
    jobs += [(m, kwargs, args.batch, args.img_size) for m in args.models]
    results = []
    for spec, kw, batch, size in jobs:
        for precision in args.precisions:
            if args.in_process or args._worker:
                r = _run_job(spec, kw, batch, size, precision, device, args)
            else:
                r = _run_job_subprocess(spec, kw, batch, size, precision, args)
            results.append(r)
            if args._worker:
                print(_RESULT_TAG + json.dumps(r), flush=True)
                return results
            print(json.dumps(r), file=sys.stderr, flush=True)
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU, {torch.get_num_threads()} threads"
    print(f"\nDevice: {where}; torch {torch.__version__}; warmup {args.warmup}, median of "
          f"{args.steps} steps; baseline {args.baseline if not args.no_baseline else 'none'}; "
          f"official anchors: {ANCHOR_DEVICE}" + (" (n/a on CPU)" if device.type != "cuda" else ""))
    print()
    print(markdown_table(results, None if args.no_baseline else args.baseline, device, args.compile))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
