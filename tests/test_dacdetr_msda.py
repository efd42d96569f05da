"""Multi-scale deformable attention core: reference, dispatcher and Triton kernel."""
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dacdetr.models.ops import (has_triton_kernel, ms_deform_attn, ms_deform_attn_core_pytorch,
                                select_backend)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def slow_msda(value, shapes, loc, attn):
    """Independent float64 loop: explicit bilinear corners, zero outside the map."""
    value = value.detach().double().numpy()
    loc = loc.detach().double().numpy()
    attn = attn.detach().double().numpy()
    shapes = [(int(h), int(w)) for h, w in shapes.tolist()]
    starts = np.cumsum([0] + [h * w for h, w in shapes])[:-1]
    B, _, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    out = np.zeros((B, Lq, M, D))
    for b in range(B):
        for q in range(Lq):
            for m in range(M):
                for lvl, (H, W) in enumerate(shapes):
                    for p in range(P):
                        x = loc[b, q, m, lvl, p, 0] * W - 0.5
                        y = loc[b, q, m, lvl, p, 1] * H - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = np.zeros(D)
                        for yc in (y0, y0 + 1):
                            for xc in (x0, x0 + 1):
                                if 0 <= yc < H and 0 <= xc < W:
                                    wgt = (1.0 - abs(x - xc)) * (1.0 - abs(y - yc))
                                    sample += wgt * value[b, starts[lvl] + yc * W + xc, m]
                        out[b, q, m] += attn[b, q, m, lvl, p] * sample
    return torch.from_numpy(out.reshape(B, Lq, M * D))


def make_case(B=2, Lq=5, M=2, D=4, shapes=((6, 7), (3, 4), (2, 2)), P=3, seed=0, dtype=torch.float64,
              border=False):
    g = torch.Generator().manual_seed(seed)
    shapes_t = torch.tensor(shapes, dtype=torch.long)
    S = int((shapes_t[:, 0] * shapes_t[:, 1]).sum())
    L = len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    # sample in [-0.25, 1.25] so that some points fall partly or wholly outside the map
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.5 - 0.25
    if border:
        # points exactly on pixel centres, on the map edges and on the limits of the support
        for lvl, (H, W) in enumerate(shapes):
            xs = [0.0, 1.0, 0.5 / W, 1 - 0.5 / W, -0.5 / W, 1 + 0.5 / W, 1.5 / W, 2.0 / W]
            ys = [0.0, 1.0, 0.5 / H, 1 - 0.5 / H, -0.5 / H, 1 + 0.5 / H, 1.5 / H, 1.0 / H]
            flat = loc[:, :, :, lvl].reshape(-1, 2)
            for i in range(flat.shape[0]):
                flat[i, 0] = xs[i % len(xs)]
                flat[i, 1] = ys[(i // len(xs) + i) % len(ys)]
            loc[:, :, :, lvl] = flat.view(B, Lq, M, P, 2)
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=torch.float64)
    return value.to(dtype), shapes_t, loc.to(dtype), attn.to(dtype)


def level_start(shapes):
    areas = shapes[:, 0] * shapes[:, 1]
    return torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])


# ----------------------------------------------------------------------------------------------
# reference
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed,border", [(0, False), (1, False), (2, True), (3, True)])
def test_reference_matches_slow_loop(seed, border):
    value, shapes, loc, attn = make_case(seed=seed, border=border)
    out = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    expected = slow_msda(value, shapes, loc, attn)
    assert out.shape == (2, 5, 2 * 4) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_reference_fully_outside_is_zero_and_centre_is_exact():
    value, shapes, loc, attn = make_case(Lq=2, P=2, seed=4)
    loc[:, 0] = 1.5  # every point of query 0 is outside every level
    loc[:, 1] = -0.75
    out = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    assert torch.count_nonzero(out) == 0
    # a point on a pixel centre reads exactly that pixel
    value, shapes, loc, attn = make_case(B=1, Lq=1, M=1, D=3, shapes=((4, 5),), P=1, seed=5)
    row, col = 2, 3
    loc[..., 0] = (col + 0.5) / 5
    loc[..., 1] = (row + 0.5) / 4
    attn.fill_(0.5)
    out = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    torch.testing.assert_close(out[0, 0], 0.5 * value[0, row * 5 + col, 0], rtol=0, atol=1e-15)


def test_reference_accepts_list_shapes_and_float32():
    value, shapes, loc, attn = make_case(seed=6, dtype=torch.float32)
    a = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    b = ms_deform_attn_core_pytorch(value, shapes.tolist(), loc, attn)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    torch.testing.assert_close(a.double(), slow_msda(value, shapes, loc, attn), rtol=0, atol=2e-6)


def test_reference_level_count_mismatch_raises():
    value, shapes, loc, attn = make_case(seed=7)
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn_core_pytorch(value, shapes[:2], loc, attn)


def test_reference_gradcheck():
    value, shapes, loc, attn = make_case(B=1, Lq=2, M=2, D=2, shapes=((3, 4), (2, 2)), P=2, seed=8)
    # keep the points away from pixel-grid lines, where bilinear sampling is not differentiable
    loc = loc.clamp(0.05, 0.95)
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn_core_pytorch(v, shapes, l, a), inputs, eps=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# dispatcher
# ----------------------------------------------------------------------------------------------
def test_dispatch_cpu_uses_reference(monkeypatch):
    monkeypatch.delenv("LAYERZOO_MSDA", raising=False)
    for dtype in (torch.float32, torch.float64):
        value, shapes, loc, attn = make_case(seed=9, dtype=dtype)
        assert select_backend(value) == "pytorch"
        out = ms_deform_attn(value, shapes, level_start(shapes), loc, attn, im2col_step=64)
        assert torch.equal(out, ms_deform_attn_core_pytorch(value, shapes, loc, attn))


def test_dispatch_env_override(monkeypatch):
    value = torch.zeros(1, 4, 1, 2)
    monkeypatch.setenv("LAYERZOO_MSDA", "pytorch")
    assert select_backend(value) == "pytorch"
    monkeypatch.setenv("LAYERZOO_MSDA", "cuda-please")
    with pytest.raises(ValueError, match="LAYERZOO_MSDA"):
        select_backend(value)
    monkeypatch.setenv("LAYERZOO_MSDA", "triton")
    if has_triton_kernel():
        assert select_backend(value) == "triton"
    else:
        with pytest.raises(RuntimeError, match="Triton"):
            select_backend(value)


# ----------------------------------------------------------------------------------------------
# Triton kernel on CPU through Triton's interpreter (in a subprocess: TRITON_INTERPRET must be set
# before triton is imported and must not leak into the other tests)
# ----------------------------------------------------------------------------------------------
_INTERPRETER_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import torch
    try:
        import triton, triton.language as tl

        @triton.jit
        def _probe(x_ptr, y_ptr, N: tl.constexpr):
            offs = tl.arange(0, N)
            tl.atomic_add(y_ptr + offs % 2, tl.load(x_ptr + offs))

        x = torch.arange(4, dtype=torch.float32)
        y = torch.zeros(2)
        _probe[(1,)](x, y, N=4)
        assert y.tolist() == [2.0, 4.0], y
    except Exception as exc:  # the interpreter cannot run CPU tensors here
        print(json.dumps({"skip": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)

    from dacdetr.models.ops import ms_deform_attn, ms_deform_attn_core_pytorch, select_backend
    from dacdetr.models.ops import triton_msda

    def case(B, Lq, M, D, shapes, P, seed, border=False):
        g = torch.Generator().manual_seed(seed)
        shapes = torch.tensor(shapes, dtype=torch.long)
        S = int((shapes[:, 0] * shapes[:, 1]).sum())
        L = shapes.shape[0]
        value = torch.randn(B, S, M, D, generator=g)
        loc = torch.rand(B, Lq, M, L, P, 2, generator=g) * 1.5 - 0.25
        if border:
            W = shapes[:, 1].double().view(1, 1, 1, L, 1)
            H = shapes[:, 0].double().view(1, 1, 1, L, 1)
            kx = torch.randint(-1, 2 * int(shapes[:, 1].max()) + 2, loc.shape[:-1], generator=g)
            ky = torch.randint(-1, 2 * int(shapes[:, 0].max()) + 2, loc.shape[:-1], generator=g)
            loc[..., 0] = (kx / (2 * W)).float()   # multiples of half a pixel: centres and edges
            loc[..., 1] = (ky / (2 * H)).float()
        attn = torch.rand(B, Lq, M, L, P, generator=g)
        return value, shapes, loc, attn

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()

    results = {}
    cases = {
        "d32": dict(B=2, Lq=6, M=2, D=32, shapes=((6, 7), (3, 4), (2, 2), (1, 1)), P=2, seed=0),
        "d6_odd": dict(B=1, Lq=9, M=3, D=6, shapes=((5, 3), (2, 4)), P=3, seed=1),
        "border": dict(B=1, Lq=8, M=2, D=8, shapes=((4, 5), (2, 3)), P=4, seed=2, border=True),
    }
    for name, kw in cases.items():
        value, shapes, loc, attn = case(**kw)
        starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
        ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        assert select_backend(ins[0]) == "triton"
        out = ms_deform_attn(ins[0], shapes, starts, ins[1], ins[2])
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(99))
        grads = torch.autograd.grad(out, ins, grad_out)
        ref_ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
        ref = ms_deform_attn_core_pytorch(ref_ins[0], shapes, ref_ins[1], ref_ins[2])
        ref_grads = torch.autograd.grad(ref, ref_ins, grad_out)
        # On pixel-grid lines bilinear sampling has only one-sided derivatives, and which side is
        # taken depends on rounding (the kernel follows the official CUDA op, grid_sample rounds
        # 2*loc-1 first): compare the location gradient only where each coordinate is off the grid.
        size = torch.stack([shapes[:, 1], shapes[:, 0]], -1).float().view(1, 1, 1, -1, 1, 2)
        pix = loc * size - 0.5
        smooth = (pix - pix.round()).abs() > 1e-3
        results[name] = {"out": rel(out, ref), "grad_value": rel(grads[0], ref_grads[0]),
                         "grad_loc": rel(grads[1][smooth], ref_grads[1][smooth]),
                         "grad_attn": rel(grads[2], ref_grads[2]),
                         "on_grid": int((~smooth).sum()), "n_loc": int(smooth.numel()),
                         "dtype": str(out.dtype), "shape": list(out.shape)}

    # 64-bit indexing path and partial gradients on the first case
    value, shapes, loc, attn = case(**cases["d32"])
    ref = ms_deform_attn_core_pytorch(value, shapes, loc, attn)
    out64 = triton_msda.msda_forward(value, shapes, None, loc, attn, force_int64=True)
    go = torch.ones_like(ref)
    full = triton_msda.msda_backward(value, shapes, None, loc, attn, go)
    full64 = triton_msda.msda_backward(value, shapes, None, loc, attn, go, force_int64=True)
    only_attn = triton_msda.msda_backward(value, shapes, None, loc, attn, go, needs_value=False,
                                          needs_loc=False)
    results["int64"] = {"out": rel(out64, ref),
                        "grads": max(rel(a, b) for a, b in zip(full64, full))}
    results["partial"] = {"none": [only_attn[0] is None, only_attn[1] is None],
                          "grad_attn": rel(only_attn[2], full[2])}
    # fully outside points: zero output and zero gradients
    loc_out = loc.clone(); loc_out[:, 0] = 1.75
    o = triton_msda.msda_forward(value, shapes, None, loc_out, attn)
    gv, gl, ga = triton_msda.msda_backward(value, shapes, None, loc_out, attn, go)
    results["outside"] = {"out": o[:, 0].abs().max().item(), "gl": gl[:, 0].abs().max().item(),
                          "ga": ga[:, 0].abs().max().item()}
    print(json.dumps(results))
""")


@pytest.fixture(scope="module")
def interpreter_results():
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton is installed with torch's CUDA build
        pytest.skip(f"triton is not importable: {exc}")
    env = dict(os.environ, TRITON_INTERPRET="1", LAYERZOO_MSDA="triton", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _INTERPRETER_SCRIPT], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(f"Triton's interpreter cannot run CPU tensors here: {result['skip']}")
    return result


@pytest.mark.parametrize("name", ["d32", "d6_odd", "border"])
def test_triton_interpreter_matches_reference(interpreter_results, name):
    r = interpreter_results[name]
    assert r["dtype"] == "torch.float32"
    for key in ("out", "grad_value", "grad_loc", "grad_attn"):
        assert r[key] < 1e-5, (name, key, r)
    if name == "border":  # most coordinates sit on pixel centres / edges / the support limits
        assert r["on_grid"] > r["n_loc"] // 3


def test_triton_interpreter_int64_partial_outside(interpreter_results):
    r = interpreter_results
    assert r["int64"]["out"] < 1e-5 and r["int64"]["grads"] < 1e-6
    assert r["partial"]["none"] == [True, True] and r["partial"]["grad_attn"] == 0.0
    assert r["outside"] == {"out": 0.0, "gl": 0.0, "ga": 0.0}


# ----------------------------------------------------------------------------------------------
# GPU
# ----------------------------------------------------------------------------------------------
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _gpu_case(B, Lq, shapes, M=8, D=32, P=4, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    shapes = torch.tensor(shapes, dtype=torch.long, device="cuda")
    S = int((shapes[:, 0] * shapes[:, 1]).sum())
    L = shapes.shape[0]
    value = torch.randn(B, S, M, D, device="cuda", generator=g).to(dtype)
    loc = (torch.rand(B, Lq, M, L, P, 2, device="cuda", generator=g) * 1.2 - 0.1).to(dtype)
    attn = torch.rand(B, Lq, M, L, P, device="cuda", generator=g).softmax(-1).to(dtype)
    return value, shapes, level_start(shapes), loc, attn


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@cuda_only
@pytest.mark.gpu
def test_gpu_kernel_matches_reference_fp32(monkeypatch):
    monkeypatch.delenv("LAYERZOO_MSDA", raising=False)
    if not has_triton_kernel():
        pytest.skip("triton not available")
    value, shapes, starts, loc, attn = _gpu_case(2, 1000, ((50, 84), (25, 42), (13, 21), (7, 11)))
    assert select_backend(value) == "triton"
    ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    out = ms_deform_attn(ins[0], shapes, starts, ins[1], ins[2])
    go = torch.randn_like(out)
    grads = torch.autograd.grad(out, ins, go)
    ref_ins = [t.double().requires_grad_(True) for t in (value, loc, attn)]
    ref = ms_deform_attn_core_pytorch(ref_ins[0], shapes, ref_ins[1], ref_ins[2])
    ref_grads = torch.autograd.grad(ref, ref_ins, go.double())
    assert _rel(out, ref) < 1e-5
    for got, exp in zip(grads, ref_grads):
        assert _rel(got, exp) < 1e-4


@cuda_only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_kernel_low_precision(monkeypatch, dtype):
    monkeypatch.delenv("LAYERZOO_MSDA", raising=False)
    if not has_triton_kernel():
        pytest.skip("triton not available")
    value, shapes, starts, loc, attn = _gpu_case(1, 300, ((20, 30), (10, 15)), dtype=dtype, seed=1)
    ins = [t.clone().requires_grad_(True) for t in (value, loc, attn)]
    out = ms_deform_attn(ins[0], shapes, starts, ins[1], ins[2])
    assert out.dtype == dtype
    grads = torch.autograd.grad(out, ins, torch.ones_like(out))
    assert [g.dtype for g in grads] == [dtype] * 3
    ref = ms_deform_attn_core_pytorch(value.double(), shapes, loc.double(), attn.double())
    assert _rel(out, ref) < (1e-2 if dtype == torch.bfloat16 else 2e-3)


# ----------------------------------------------------------------------------------------------
# Ahead-of-time compilation for a Hopper GPU (no GPU needed): the kernels must lower to
# 128-bit gathers / vector atomics without register spills at the DETR configuration.
# ----------------------------------------------------------------------------------------------
def _compile_sm90(kernel, signature, constexprs, num_warps):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    # torch allocations are 16-byte aligned; the launcher specialises pointers on that
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(sig.values()) if t.startswith("*")}
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def _stack_bytes(cubin, tmp_path):
    from triton import knobs

    path = tmp_path / "k.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", str(path)],
                           capture_output=True, text=True, check=True).stdout
    regs, stack = (int(v) for v in re.search(r"REG:(\d+).*?STACK:(\d+)", usage).groups())
    return regs, stack


def test_triton_kernels_compile_for_sm90_without_spills(tmp_path):
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
        from triton import knobs
        assert Path(knobs.nvidia.cuobjdump.path).exists()
    except Exception as exc:
        pytest.skip(f"triton ahead-of-time compilation is not available here: {exc}")
    from dacdetr.models.ops import triton_msda

    common = {"value_ptr": "*fp32", "shapes_ptr": "*i64", "start_ptr": "*i64", "loc_ptr": "*fp32",
              "attn_ptr": "*fp32"}
    ints = {"n_rows": "i32", "rows_per_batch": "i32", "S": "i32"}
    geometry = {"M": 8, "D": 32, "L": 4, "P": 4, "BLOCK_D": 32, "INT64": False}

    cfg = triton_msda.default_config(32)
    fwd = _compile_sm90(triton_msda._msda_fwd_kernel, {**common, "out_ptr": "*fp32", **ints},
                        {**geometry, "BLOCK_N": cfg["BLOCK_N"]}, cfg["num_warps"])
    assert "ld.global.v4" in fwd.asm["ptx"]
    regs, stack = _stack_bytes(fwd.asm["cubin"], tmp_path)
    assert stack == 0 and regs <= 128, (regs, stack)

    cfg = triton_msda.default_config(32, backward=True)
    bwd = _compile_sm90(triton_msda._msda_bwd_kernel,
                        {**common, "grad_out_ptr": "*fp32", "grad_value_ptr": "*fp32", "grad_loc_ptr": "*fp32",
                         "grad_attn_ptr": "*fp32", **ints},
                        {**geometry, "BLOCK_N": cfg["BLOCK_N"], "GRAD_VALUE": True, "GRAD_LOC": True,
                         "GRAD_ATTN": True, "LOAD_VALUES": True}, cfg["num_warps"])
    ptx = bwd.asm["ptx"]
    assert "ld.global.v4" in ptx and ".add.v4.f32" in ptx  # vectorised fp32 atomics on sm_90
    regs, stack = _stack_bytes(bwd.asm["cubin"], tmp_path)
    assert stack == 0 and regs <= 128, (regs, stack)
