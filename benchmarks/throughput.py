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
PAPERS = ("dianet", "rlanet", "dla", "dwnet")


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


def _where(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = "CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


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



# ------------------------------------------------------------------------------------------
# Paired suites: a model against a reference in the same process, interleaved
# ------------------------------------------------------------------------------------------
#: the reference "eager" means: the same model (same init), not compiled, against the model compiled
EAGER = "eager"

#: ``--suite cpu``: (label, model, reference, batch, img_size, target ratio). The issue's batches (64 / 128)
#: are scaled down for a CPU; model and reference always run at the same batch here.
SUITES = {
    "cpu": [
        ("resnet50_dla_l vs tv resnet50", "dla:resnet50_dla_l", "torchvision:resnet50", 8, 224, 0.85),
        ("rla_resnet50 vs tv resnet50", "rlanet:rla_resnet50", "torchvision:resnet50", 8, 224, 0.9),
        ("rla_mobilenetv2 vs tv mobilenet_v2", "rlanet:rla_mobilenetv2", "torchvision:mobilenet_v2", 16, 224, 0.9),
        ("dwnet_tiny vs timm swin_tiny", "dwnet:dwnet_tiny", "timm:swin_tiny_patch4_window7_224", 8, 224, 1.0),
        ("dia_resnet164 compiled vs eager", "dianet:dia_resnet164", EAGER, 32, 32, 1.5),
        ("dla_b110 compiled vs eager", "dla:dla_b110", EAGER, 32, 32, 1.5),
        ("dla_l110 compiled vs eager", "dla:dla_l110", EAGER, 32, 32, 1.5),
    ],
}


def _train_step_fn(model, run, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), y).backward()
        opt.step()

    return step


def _pair_member(spec, batch, img_size, device, compile_it, channels_last):
    torch.manual_seed(0)
    model, desc = build_model(spec)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    with torch.no_grad():
        num_classes = model.eval()(torch.zeros(1, 3, img_size, img_size, device=device)).shape[-1]
    model.train()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, img_size, img_size, generator=gen).to(device=device, memory_format=fmt)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    run = torch.compile(model) if compile_it else model
    return _train_step_fn(model, run, x, y), desc, sum(p.numel() for p in model.parameters())


def measure_pair(label, spec, ref, batch, img_size, target, device, args):
    """Train steps of ``spec`` and of ``ref`` (or of ``spec`` eager when ``ref == EAGER``, ``spec`` then
    being compiled) interleaved: ``--rounds`` rounds of ``--steps-per-round`` steps each, the order of the
    two alternating from round to round (ABBA...). Returns the median img/s of each, the ratio of the
    per-round medians (median, min, max over the rounds) and the per-step spread."""
    compiled = ref == EAGER
    step_a, desc_a, params = _pair_member(spec, batch, img_size, device, compiled, args.channels_last)
    step_b, desc_b, _ = _pair_member(spec if compiled else ref, batch, img_size, device, False,
                                     args.channels_last)
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 3 if compiled else 1)):
        step_a()
    t_first = time.perf_counter() - t0
    for _ in range(max(args.warmup, 1)):
        step_b()
    times_a, times_b, ratios = [], [], []
    for r in range(args.rounds):
        order = ((step_a, times_a), (step_b, times_b))
        if r % 2:
            order = order[::-1]
        meds = {}
        for step, acc in order:
            ts = []
            for _ in range(args.steps_per_round):
                t = time.perf_counter()
                step()
                ts.append(time.perf_counter() - t)
            acc += ts
            meds[id(acc)] = statistics.median(ts)
        ratios.append(meds[id(times_b)] / meds[id(times_a)])

    def spread(ts):
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        return (q[2] - q[0]) / q[1]

    ta, tb = statistics.median(times_a), statistics.median(times_b)
    return dict(label=label, model=spec, reference=ref if not compiled else f"{spec} eager", desc=desc_a,
                ref_desc=desc_b, params=params, batch=batch, img_size=img_size, target=target,
                train_ips=batch / ta, ref_train_ips=batch / tb, ratio=statistics.median(ratios),
                ratio_min=min(ratios), ratio_max=max(ratios), iqr_rel=spread(times_a),
                ref_iqr_rel=spread(times_b), steps=len(times_a), warmup_s=t_first if compiled else None,
                channels_last=bool(args.channels_last), threads=torch.get_num_threads())


def suite_table(results):
    head = ("| pair | batch @ res | model train img/s | reference train img/s | ratio (median of rounds) | "
            "ratio min-max | step IQR/median model / ref | target | met |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['label']} | | error: {r['error']} |" + " |" * 6)
            continue
        lines.append(
            f"| {r['label']} | {r['batch']} @ {r['img_size']} | {r['train_ips']:.2f} | {r['ref_train_ips']:.2f} | "
            f"{r['ratio']:.2f} | {r['ratio_min']:.2f}-{r['ratio_max']:.2f} | "
            f"{100 * r['iqr_rel']:.0f}% / {100 * r['ref_iqr_rel']:.0f}% | >= {r['target']} | "
            f"{'yes' if r['ratio'] >= r['target'] else 'NO'} |")
    return "\n".join(lines)


def run_suite(args, device):
    import subprocess

    pairs = SUITES[args.suite]
    if args.only:
        pairs = [p for p in pairs if any(o in p[0] for o in args.only)]
    results = []
    for i, (label, spec, ref, batch, size, target) in enumerate(pairs):
        if args.batch_override:
            batch = args.batch_override
        if args.in_process or args._worker:
            try:
                r = measure_pair(label, spec, ref, batch, size, target, device, args)
            except (RuntimeError, ValueError, TypeError, KeyError) as exc:
                r = dict(label=label, error=(str(exc).splitlines() or [type(exc).__name__])[0][:100])
            if args._worker:
                print(_RESULT_TAG + json.dumps(r), flush=True)
                return [r]
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--_worker", "--suite", args.suite,
                   "--only", label, "--device", args.device, "--rounds", str(args.rounds),
                   "--steps-per-round", str(args.steps_per_round), "--warmup", str(args.warmup),
                   "--threads", str(args.threads or 1)]
            if args.batch_override:
                cmd += ["--batch-override", str(args.batch_override)]
            if args.channels_last:
                cmd.append("--channels-last")
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            r = next((json.loads(line[len(_RESULT_TAG):]) for line in proc.stdout.splitlines()
                      if line.startswith(_RESULT_TAG)),
                     dict(label=label, error=f"worker exited with code {proc.returncode}"))
        results.append(r)
        print(json.dumps(r), file=sys.stderr, flush=True)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=sorted(SUITES), default=None,
                   help="paired table: each model against its reference in the same process, interleaved "
                        "(see SUITES); --models is then not needed")
    p.add_argument("--only", nargs="+", default=None, help="--suite: only the pairs whose label contains one "
                   "of these strings")
    p.add_argument("--rounds", type=int, default=6, help="--suite: interleaved rounds")
    p.add_argument("--steps-per-round", type=int, default=3, help="--suite: timed steps per model and round")
    p.add_argument("--batch-override", type=int, default=None, help="--suite: one batch for every pair")
    p.add_argument("--channels-last", action="store_true", help="--suite: model, reference and input in "
                   "channels_last")
    p.add_argument("--models", nargs="+", default=None, help="paper:name (or an alias: "
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
    if args.suite:
        torch.set_num_threads(args.threads or 1)
        results = run_suite(args, device)
        if args._worker:
            return results
        print(f"\nSuite {args.suite}: {_where(device)}; torch {torch.__version__}; {args.rounds} interleaved "
              f"rounds x {args.steps_per_round} steps, warmup {args.warmup}"
              + ("; channels_last" if args.channels_last else ""))
        print()
        print(suite_table(results))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
        return results
    if not args.models:
        raise SystemExit("throughput.py: give --models (paper:name ...) or --suite")
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
    where = _where(device)
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
