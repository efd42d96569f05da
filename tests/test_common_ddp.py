"""Two gloo processes on CPU: synchronised BN + global-batch sharding give the single-process gradients."""
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
    ctx = mp.get_context("spawn")
    out_file = str(tmp_path / "rank0.pt")
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, out_file)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    state, stats = torch.load(out_file, weights_only=True)
    for k, v in ref.state_dict().items():
        assert torch.allclose(state[k].to(v.dtype), v, rtol=1e-9, atol=1e-12), k
    assert abs(stats["loss"] - ref_stats["loss"]) < 1e-12 and stats["count"] == 7
