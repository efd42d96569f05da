"""Two gloo processes on CPU: synchronised BN + global-batch sharding give the single-process gradients; a
non-finite loss on one rank stops every rank together."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from common import engine
from common.distributed import DistEnv, free_port
from common.fingerprint import det_init_


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                        nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    det_init_(net)
    return net.double()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(7, 3, 6, 6, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])


def _worker(rank, world, port, out_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        net = engine.convert_sync_batchnorm(_net())
        ddp = nn.parallel.DistributedDataParallel(net)
        x, y = _data()
        parts = torch.arange(7).tensor_split(world)[rank]  # uneven split: 4 / 3
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        env = DistEnv(rank, rank, world, True, torch.device("cpu"))
        stats = engine.train_one_epoch(ddp, [(x[parts], y[parts])], nn.CrossEntropyLoss(), opt, env,
                                       engine.AmpConfig(), log=lambda *a: None, print_freq=0)
        if rank == 0:
            torch.save((net.state_dict(), stats), out_file)
    finally:
        dist.destroy_process_group()


def test_two_rank_sync_bn_step_equals_single_process_step(tmp_path):
    ref = _net()
    x, y = _data()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    ref_stats = engine.train_one_epoch(ref, [(x, y)], nn.CrossEntropyLoss(), opt, DistEnv(), engine.AmpConfig(),
                                       log=lambda *a: None, print_freq=0)
    out_file = str(tmp_path / "rank0.pt")
    _spawn(_worker, (2, free_port(), out_file))
    state, stats = torch.load(out_file, weights_only=True)
    for k, v in ref.state_dict().items():
        assert torch.allclose(state[k].to(v.dtype), v, rtol=1e-9, atol=1e-12), k
    assert abs(stats["loss"] - ref_stats["loss"]) < 1e-12 and stats["count"] == 7


# ---------------------------------------------------------------- a NaN on one rank only
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3)).double()


class _SnapshotLoader:
    """Two batches; records the parameters just before handing out the second one."""

    def __init__(self, batches, model):
        self.batches, self.model, self.snap = batches, model, None

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, b in enumerate(self.batches):
            if i == 1:
                self.snap = [p.detach().clone() for p in self.model.parameters()]
            yield b


def _nan_worker(rank, world, port, out_dir):
    from common.train.step import NonFiniteLossError, TrainStep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    out = {}
    try:
        env = DistEnv(rank, rank, world, True, torch.device("cpu"))
        # 1) the classification loop: batch 1 is NaN on rank 1 only
        model, bare = engine.prepare_model(_mlp(), None, env, find_unused_parameters=True)
        out["find_unused"] = bool(model.find_unused_parameters)
        g = torch.Generator().manual_seed(rank)
        x = [torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64) for _ in range(2)]
        if rank == 1:
            x[1][2, 0, 0, 0] = float("nan")
        loader = _SnapshotLoader([(xb, torch.tensor([0, 1, 2, 0])) for xb in x], bare)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        try:
            engine.train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, env, engine.AmpConfig(), epoch=2,
                                   log=lambda *a: None, print_freq=0)
            out["loop"] = "no error"
        except NonFiniteLossError as e:
            out["loop"] = str(e)
        out["loop_untouched"] = all(torch.equal(a, b) for a, b in zip(loader.snap, bare.parameters()))
        # 2) the step core deciding by itself (flag mode), NaN inside an accumulation window
        model, bare = engine.prepare_model(_mlp(), None, env)
        before = [p.detach().clone() for p in bare.parameters()]
        step = TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), accum_steps=2)
        try:
            for i in range(2):
                with step.forward(i, 2, epoch=5):
                    loss = model(x[0]).sum()
                    if rank == 1 and i == 0:
                        loss = loss * float("nan")
                step.backward(loss)
            out["core"] = "no error"
        except NonFiniteLossError as e:
            out["core"] = str(e)
        out["core_untouched"] = all(torch.equal(a, b) for a, b in zip(before, bare.parameters()))
    finally:
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _spawn(target, args, timeout=120):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, *args)) for r in range(2)]
    for p in procs:
        p.start()
    hung = []
    for p in procs:
        p.join(timeout)
        if p.is_alive():  # fail rather than hang
            hung.append(p.pid)
            p.terminate()
            p.join(10)
    assert not hung, f"ranks still running after {timeout}s (a collective is waiting): pids {hung}"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_together(tmp_path):
    _spawn(_nan_worker, (2, free_port(), str(tmp_path)))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["find_unused"] and r1["find_unused"]
    assert r0["loop"] == r1["loop"] and "non-finite loss (nan) at epoch 2, step 1/2;" in r0["loop"]
    assert r0["loop_untouched"] and r1["loop_untouched"]  # the first batch's update stays, the second never came
    assert r0["core"] == r1["core"]
    assert "epoch 5, step 1/2 (micro-batches 0-1 of one optimizer step) on process(es) 1;" in r0["core"]
    assert r0["core_untouched"] and r1["core_untouched"]
