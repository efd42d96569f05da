"""Benchmark and check the multi-scale deformable attention core.

On CUDA it times, for the three standard DAC-DETR / Deformable-DETR shapes (8 heads x 32 channels,
4 levels x 4 points, levels (100,167) (50,84) (25,42) (13,21)):

* the pure-PyTorch reference (grid_sample) and
* the Triton kernel,

forward and forward+backward (CUDA events, warm-up, median), and prints them next to the
official CUDA op measured on one H100 (hard-coded baseline).

    python benchmarks/msda.py                 # timing table (reference + Triton)
    python benchmarks/msda.py --check         # + max errors Triton vs reference (fwd and 3 grads)
    python benchmarks/msda.py --sweep         # + launch-parameter sweep of the Triton kernels
    python benchmarks/msda.py --dtype bfloat16

Without CUDA it only times the reference at a small shape (and says so); ``--cpu-cases`` times the
listed cases at their real shapes on CPU, the dispatched op against the reference in the same run:

    python benchmarks/msda.py --cpu-cases --cases encoder_b2 --warmup 0 --iters 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dacdetr.models.ops import has_triton_kernel, ms_deform_attn_core_pytorch  # noqa: E402

LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))  # 22,223 tokens
HEADS, CHANNELS, POINTS = 8, 32, 4

# name: (batch, queries)
CASES = {
    "encoder_b2": (2, 22223),
    "decoder_b2": (2, 1100),
    "encoder_b8": (8, 22223),
}
# Official CUDA op on one H100, float32: (fwd ms, fwd+bwd ms); the PyTorch core measured there too.
OFFICIAL_MS = {
    "encoder_b2": (0.91, 3.20),
    "decoder_b2": (0.09, 0.52),
    "encoder_b8": (4.11, 12.59),
}
OFFICIAL_PYTORCH_MS = {
    "encoder_b2": (5.71, 18.90),
    "decoder_b2": (0.77, 2.31),
    "encoder_b8": (20.47, 71.50),
}


def make_inputs(batch, queries, levels=LEVELS, heads=HEADS, channels=CHANNELS, points=POINTS,
                device="cuda", dtype=torch.float32, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long, device=device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    S = int((shapes[:, 0] * shapes[:, 1]).sum())
    L = len(levels)
    value = torch.randn(batch, S, heads, channels, device=device, generator=g).to(dtype)
    loc = torch.rand(batch, queries, heads, L, points, 2, device=device, generator=g).to(dtype)
    attn = torch.rand(batch, queries, heads, L * points, device=device, generator=g).softmax(-1)
    attn = attn.view(batch, queries, heads, L, points).to(dtype)
    return value, shapes, starts, loc, attn


def cuda_time(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def implementations():
    impls = {"pytorch": lambda v, s, st, l, a: ms_deform_attn_core_pytorch(v, s, l, a)}
    if has_triton_kernel():
        from dacdetr.models.ops.triton_msda import ms_deform_attn_triton
        impls["triton"] = ms_deform_attn_triton
    return impls


def bench_case(fn, inputs, warmup, iters):
    value, shapes, starts, loc, attn = inputs
    with torch.no_grad():
        fwd = cuda_time(lambda: fn(value, shapes, starts, loc, attn), warmup, iters)
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                           device=value.device, dtype=value.dtype)

    def step():
        out = fn(leaves[0], shapes, starts, leaves[1], leaves[2])
        torch.autograd.backward(out, grad_out)
        for t in leaves:
            t.grad = None

    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    both = cuda_time(step, warmup, iters)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
    return fwd, both, peak


def check_case(inputs):
    """Max relative errors (max |diff| / max |ref|) of the Triton kernel vs the float64 reference."""
    from dacdetr.models.ops.triton_msda import ms_deform_attn_triton
    value, shapes, starts, loc, attn = inputs
    leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    out = ms_deform_attn_triton(leaves[0], shapes, starts, leaves[1], leaves[2])
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.detach().double().requires_grad_(True) for t in (value, loc, attn)]
    ref = ms_deform_attn_core_pytorch(ref_leaves[0], shapes, ref_leaves[1], ref_leaves[2])
    ref_grads = torch.autograd.grad(ref, ref_leaves, grad_out.double())
    # the same-precision reference, to put the kernel's error in context
    same_leaves = [t.detach().clone().requires_grad_(True) for t in (value, loc, attn)]
    same = ms_deform_attn_core_pytorch(same_leaves[0], shapes, same_leaves[1], same_leaves[2])
    same_grads = torch.autograd.grad(same, same_leaves, grad_out)

    def rel(a, b):
        return ((a.double() - b).abs().max() / b.abs().max()).item()

    names = ("out", "grad_value", "grad_loc", "grad_attn")
    kernel = dict(zip(names, [rel(out, ref)] + [rel(g, r) for g, r in zip(grads, ref_grads)]))
    torch_err = dict(zip(names, [rel(same, ref)] + [rel(g, r) for g, r in zip(same_grads, ref_grads)]))
    return kernel, torch_err


def sweep(inputs, warmup, iters):
    from dacdetr.models.ops import triton_msda
    value, shapes, starts, loc, attn = inputs
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3],
                           device=value.device, dtype=value.dtype)
    print("\nlaunch sweep (BLOCK_N x num_warps), median ms")
    print(f"{'BLOCK_N':>8} {'warps':>6} {'fwd':>8} {'bwd':>8}")
    # configurations that keep 1-4 rows per thread (the rest spill or idle lanes)
    for block_n, warps in ((16, 2), (16, 4), (32, 2), (32, 4), (32, 8), (64, 4), (64, 8), (128, 8)):
        try:
            fwd = cuda_time(lambda: triton_msda.msda_forward(value, shapes, starts, loc, attn,
                                                             block_n=block_n, num_warps=warps),
                            warmup, iters)
            bwd = cuda_time(lambda: triton_msda.msda_backward(value, shapes, starts, loc, attn, grad_out,
                                                              block_n=block_n, num_warps=warps),
                            warmup, iters)
        except Exception as exc:  # e.g. out of resources for a large tile
            print(f"{block_n:>8} {warps:>6}  failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        print(f"{block_n:>8} {warps:>6} {fwd:8.3f} {bwd:8.3f}")
    fwd_cfg = triton_msda.default_config(value.shape[-1])
    bwd_cfg = triton_msda.default_config(value.shape[-1], backward=True)
    print(f"defaults: fwd {fwd_cfg}, bwd {bwd_cfg}")


def run_cuda(args):
    dtype = getattr(torch, args.dtype)
    impls = implementations()
    if "triton" not in impls:
        print("triton is not importable: timing the reference only")
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, warm-up {args.warmup}, "
          f"median of {args.iters}")
    print("official = official CUDA op on one H100 (float32, from the project's anchors); "
          "'x ref' / 'x off' = speed-up over the reference / the official op (>1: faster)\n")
    header = (f"{'case':<12} {'impl':<8} {'fwd ms':>8} {'f+b ms':>8} {'peak GB':>8} "
              f"{'fwd x ref':>9} {'f+b x ref':>9} {'fwd x off':>9} {'f+b x off':>9}")
    print(header)
    print("-" * len(header))
    for name in args.cases:
        batch, queries = CASES[name]
        inputs = make_inputs(batch, queries, dtype=dtype)
        results = {}
        for impl, fn in impls.items():
            results[impl] = bench_case(fn, inputs, args.warmup, args.iters)
        ref_fwd, ref_both, _ = results["pytorch"]
        off_fwd, off_both = OFFICIAL_MS[name]
        for impl, (fwd, both, peak) in results.items():
            # "x ref" / "x off": speed-up over the reference / the official op (>1 = faster)
            print(f"{name:<12} {impl:<8} {fwd:8.3f} {both:8.3f} {peak:8.2f} {ref_fwd / fwd:9.2f} "
                  f"{ref_both / both:9.2f} {off_fwd / fwd:9.2f} {off_both / both:9.2f}")
        print(f"{name:<12} {'official':<8} {off_fwd:8.3f} {off_both:8.3f} {'':>8} "
              f"{'':>9} {'':>9} {1.0:9.2f} {1.0:9.2f}"
              f"   (its PyTorch core there: {OFFICIAL_PYTORCH_MS[name][0]} / {OFFICIAL_PYTORCH_MS[name][1]} ms)")
        if args.check and "triton" in impls:
            kernel, torch_err = check_case(inputs)
            print(f"{'':<12} check vs float64 reference (max|diff|/max|ref|): "
                  + ", ".join(f"{k} {v:.2e}" for k, v in kernel.items()))
            print(f"{'':<12} same-dtype PyTorch reference for scale:          "
                  + ", ".join(f"{k} {v:.2e}" for k, v in torch_err.items()))
        del inputs
        torch.cuda.empty_cache()
    if args.sweep and "triton" in impls:
        sweep(make_inputs(*CASES["encoder_b2"], dtype=dtype), args.warmup, args.iters)


def _cpu_time(fn, warmup, iters):
    times = []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_cpu_cases(args):
    """The real shapes on CPU: the op as dispatched (``ms_deform_attn``: the custom op, its CPU implementation)
    against the plain grid_sample reference with autograd, in the same run."""
    from dacdetr.models.ops import ms_deform_attn

    print(f"CPU, {torch.get_num_threads()} threads, warm-up {args.warmup}, median of {args.iters}; "
          "'x ref' = speed-up of the op over the grid_sample reference (>1: faster)")
    print(f"{'case':<12} {'impl':<10} {'fwd ms':>10} {'f+b ms':>10} {'f+b x ref':>10}")
    impls = {"reference": lambda v, s, st, l, a: ms_deform_attn_core_pytorch(v, s, l, a),
             "op": lambda v, s, st, l, a: ms_deform_attn(v, [tuple(x) for x in s.tolist()], st, l, a)}
    for name in args.cases:
        inputs = make_inputs(*CASES[name], device="cpu")
        value, shapes, starts, loc, attn = inputs
        leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])
        res = {}
        for impl, fn in impls.items():
            with torch.no_grad():
                fwd = _cpu_time(lambda: fn(value, shapes, starts, loc, attn), args.warmup, args.iters)
            both = _cpu_time(lambda: torch.autograd.grad(fn(leaves[0], shapes, starts, leaves[1], leaves[2]),
                                                         leaves, grad_out), args.warmup, args.iters)
            res[impl] = (fwd, both)
        for impl, (fwd, both) in res.items():
            print(f"{name:<12} {impl:<10} {fwd:10.1f} {both:10.1f} {res['reference'][1] / both:10.2f}")


def run_cpu(args):
    if args.cpu_cases:
        return run_cpu_cases(args)
    print("CUDA is not available: timing the PyTorch reference on CPU at a small shape only "
          "(the Triton kernel needs a GPU; official numbers are GPU numbers and are not compared; "
          "--cpu-cases times the real shapes).")
    levels = ((20, 34), (10, 17), (5, 9), (3, 5))
    inputs = make_inputs(1, 500, levels=levels, device="cpu")
    value, shapes, starts, loc, attn = inputs
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    fwd, both = [], []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        with torch.no_grad():
            ms_deform_attn_core_pytorch(value, shapes, loc, attn)
        t1 = time.perf_counter()
        out = ms_deform_attn_core_pytorch(leaves[0], shapes, leaves[1], leaves[2])
        out.sum().backward()
        t2 = time.perf_counter()
        if i >= args.warmup:
            fwd.append((t1 - t0) * 1e3)
            both.append((t2 - t1) * 1e3)
    print(f"batch 1, 500 queries, levels {levels}, 8 heads x 32 ch, 4 points: "
          f"fwd {statistics.median(fwd):.2f} ms, fwd+bwd {statistics.median(both):.2f} ms (median)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--check", action="store_true", help="print max errors Triton vs reference")
    parser.add_argument("--sweep", action="store_true", help="sweep the Triton launch parameters")
    parser.add_argument("--cpu-cases", action="store_true",
                        help="without CUDA: time --cases at their real shapes (op vs reference, slow)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        run_cuda(args)
    else:
        run_cpu(args)


if __name__ == "__main__":
    main()
