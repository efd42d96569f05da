"""Micro-benchmark of DWNet's inhomogeneous dynamic depth-wise convolution (I-D-DWNet's spatial op).

For the four stages of I-D-DWNet-T at 224x224 (C = 96 / 192 / 384 / 768 channels at 56 / 28 / 14 / 7 pixels,
32 kernel groups, 7x7 kernels) it times forward + backward (gradients of the input and of the per-position
kernels, loss = sum(out * g) with a fixed random g) of

* ``ours``:  :func:`dwnet.models.ops.idynamic_dwconv` (49 shifted-slice multiply-accumulates over one padded copy
  of the input, hand-written backward), and
* ``naive``: the textbook involution: ``F.unfold`` to the 49x unfolded tensor (B, C*49, H*W), multiply by the
  kernels, sum over the 49 taps, autograd for the backward (:func:`naive_idynamic_dwconv` below),

in the same run, on the same inputs, and prints a table (median ms of ``--reps`` after ``--warmup``, ratio
naive / ours, the extra memory each needs for its largest temporary, and the max relative difference of the
output and both gradients). The last line says whether ours is ``--target`` times (default 3x) faster over the
four stages together.

    python benchmarks/dwconv.py                       # CPU, batch 8, float32, 1 thread
    python benchmarks/dwconv.py --batch 2 --threads 2 --dtype float64 --reps 5
    python benchmarks/dwconv.py --device cuda --batch 64
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dwnet.models.ops import idynamic_dwconv  # noqa: E402

# I-D-DWNet-T at 224: (channels, height = width); 32 kernel groups, kernel 7
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))
GROUPS, KERNEL = 32, 7


def naive_idynamic_dwconv(x, weight):
    """The unfold reference: ``x`` (B, C, H, W), ``weight`` (B, G, k, k, H, W) -> (B, C, H, W); stride 1, zero
    padding (k - 1) // 2. Materialises the k*k-times unfolded input (and autograd keeps it for the backward)."""
    b, c, h, w = x.shape
    g, k = weight.shape[1], weight.shape[2]
    cols = F.unfold(x, k, padding=(k - 1) // 2).view(b, g, c // g, k * k, h, w)
    return (cols * weight.reshape(b, g, 1, k * k, h, w)).sum(dim=3).view(b, c, h, w)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fwd_bwd(fn, x, weight, grad, reps, warmup):
    """Median seconds of forward + backward; returns (seconds, out, grad_x, grad_w) of the last call."""
    times, res = [], None
    for it in range(warmup + reps):
        xi = x.detach().requires_grad_(True)
        wi = weight.detach().requires_grad_(True)
        _sync(x.device)
        t0 = time.perf_counter()
        out = fn(xi, wi)
        gx, gw = torch.autograd.grad(out, (xi, wi), grad)
        _sync(x.device)
        if it >= warmup:
            times.append(time.perf_counter() - t0)
        res = (out.detach(), gx, gw)
    return (statistics.median(times),) + res


def _rel(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def run(batch=8, dtype="float32", device="cpu", reps=3, warmup=1, stages=STAGES, groups=GROUPS, kernel=KERNEL,
        seed=0):
    """Benchmark every stage; returns a list of dicts (one per stage) with the times, ratio, memory and errors."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for c, hw in stages:
        x = torch.randn(batch, c, hw, hw, generator=gen).to(dev, dt)
        weight = torch.randn(batch, groups, kernel, kernel, hw, hw, generator=gen).to(dev, dt) / kernel
        grad = torch.randn(batch, c, hw, hw, generator=gen).to(dev, dt)
        t_ours, out, gx, gw = time_fwd_bwd(idynamic_dwconv, x, weight, grad, reps, warmup)
        t_naive, out_n, gx_n, gw_n = time_fwd_bwd(naive_idynamic_dwconv, x, weight, grad, reps, warmup)
        item = x.element_size()
        pad = (hw + kernel - 1) ** 2
        rows.append({
            "channels": c, "size": hw, "ours_ms": t_ours * 1e3, "naive_ms": t_naive * 1e3,
            "ratio": t_naive / t_ours,
            "ours_mb": batch * c * pad * item / 2 ** 20,  # one padded copy of the input
            "naive_mb": batch * c * kernel * kernel * hw * hw * item / 2 ** 20,  # the unfolded input
            "err_out": _rel(out, out_n), "err_gx": _rel(gx, gx_n), "err_gw": _rel(gw, gw_n),
        })
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--target", type=float, default=3.0, help="required speed-up over the four stages together")
    p.add_argument("--small", action="store_true", help="quarter-size stages (a quick check)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    stages = tuple((c // 4, max(hw // 4, 2)) for c, hw in STAGES) if args.small else STAGES
    groups = GROUPS // 4 if args.small else GROUPS
    rows = run(args.batch, args.dtype, args.device, args.reps, args.warmup, stages=stages, groups=groups)
    print(f"idynamic_dwconv forward+backward, {args.device} ({torch.get_num_threads()} threads), batch {args.batch}, "
          f"{args.dtype}, {groups} groups, {KERNEL}x{KERNEL}; median of {args.reps}")
    head = (f"{'stage':>5} {'C':>5} {'HxW':>7} {'ours ms':>9} {'naive ms':>9} {'ratio':>6} {'ours MB':>8} "
            f"{'naive MB':>9} {'err out':>8} {'err gx':>8} {'err gw':>8}")
    print(head)
    print("-" * len(head))
    for i, r in enumerate(rows):
        print(f"{i + 1:>5} {r['channels']:>5} {r['size']:>3}x{r['size']:<3} {r['ours_ms']:>9.1f} {r['naive_ms']:>9.1f} "
              f"{r['ratio']:>5.2f}x {r['ours_mb']:>8.1f} {r['naive_mb']:>9.1f} {r['err_out']:>8.1e} "
              f"{r['err_gx']:>8.1e} {r['err_gw']:>8.1e}")
    ours, naive = sum(r["ours_ms"] for r in rows), sum(r["naive_ms"] for r in rows)
    total = naive / ours
    print(f"{'all':>5} {'':>5} {'':>7} {ours:>9.1f} {naive:>9.1f} {total:>5.2f}x")
    print(f"speed-up over the four stages: {total:.2f}x (target >= {args.target:g}x: "
          f"{'met' if total >= args.target else 'NOT met'}); slowest stage {min(r['ratio'] for r in rows):.2f}x")
    return rows


if __name__ == "__main__":
    main()
