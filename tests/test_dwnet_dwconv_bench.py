"""benchmarks/dwconv.py (the inhomogeneous dynamic conv against a naive unfold implementation) and the op's memory
bound: no tensor of forward + backward is anywhere near the 49x unfolded input."""
import importlib.util
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dwnet.models.ops import idynamic_dwconv


def _bench():
    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "dwconv.py")
    spec = importlib.util.spec_from_file_location("layerzoo_dwconv_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_runs_and_agrees_in_float64(capsys):
    bench = _bench()
    rows = bench.run(batch=2, dtype="float64", reps=1, warmup=0, stages=((8, 9), (16, 5)), groups=4)
    assert [(r["channels"], r["size"]) for r in rows] == [(8, 9), (16, 5)]
    for r in rows:
        assert max(r["err_out"], r["err_gx"], r["err_gw"]) < 1e-13 and r["ratio"] > 0
        assert r["naive_mb"] == r["ours_mb"] * 49 * r["size"] ** 2 / (r["size"] + 6) ** 2
    bench.main(["--small", "--batch", "1", "--reps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "ours ms" in out and "naive ms" in out and "speed-up over the four stages" in out


def test_naive_reference_is_the_definition():
    bench = _bench()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, generator=gen)
    w = torch.randn(1, 2, 3, 3, 5, 6, dtype=torch.float64, generator=gen)
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    ref = torch.zeros_like(x)
    for c in range(4):
        for y in range(5):
            for z in range(6):
                ref[0, c, y, z] = (w[0, c // 2, :, :, y, z] * xp[0, c, y:y + 3, z:z + 3]).sum()
    torch.testing.assert_close(bench.naive_idynamic_dwconv(x, w), ref, rtol=1e-14, atol=1e-14)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_op_never_materialises_the_unfolded_input():
    b, c, h, g = 2, 64, 14, 8
    x = torch.randn(b, c, h, h, requires_grad=True)
    w = torch.randn(b, g, 7, 7, h, h, requires_grad=True)
    with _LargestTensor() as mode:
        out = idynamic_dwconv(x, w)
        out.backward(torch.randn_like(out))
    assert x.grad is not None and w.grad is not None
    # the largest tensors are the kernels themselves (and their gradient); the unfolded input is 49 * x.numel()
    assert mode.largest <= max(w.numel(), b * c * (h + 6) ** 2) < 49 * x.numel() // 4
