"""The DAC-DETR distributed sampler: the official contiguous slices of torch's per-epoch permutation."""
import math

import pytest
import torch

from common.data import ContiguousDistributedSampler


def _official(n, world, rank, epoch, shuffle):
    # the Deformable-DETR sampler, step by step
    g = torch.Generator()
    g.manual_seed(epoch)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    per_rank = int(math.ceil(n / world))
    order += order[:per_rank * world - len(order)]
    return order[per_rank * rank:per_rank * (rank + 1)]


@pytest.mark.parametrize("n,world", [(10, 2), (11, 3), (7, 4), (5, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_contiguous_slices_match_the_official_sampler(n, world, shuffle):
    data = list(range(n))
    for epoch in (0, 3):
        seen = []
        for rank in range(world):
            s = ContiguousDistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle)
            s.set_epoch(epoch)
            got = list(s)
            assert got == _official(n, world, rank, epoch, shuffle) and len(s) == len(got)
            seen += got
        assert sorted(set(seen)) == data  # every image is dealt, the padding repeats the first ones
    # and it differs from torch's interleaved dealing (the behaviour this replaces)
    if world > 1 and n >= 2 * world:
        torch_rank0 = list(torch.utils.data.DistributedSampler(data, num_replicas=world, rank=0, shuffle=False))
        assert torch_rank0 != list(ContiguousDistributedSampler(data, num_replicas=world, rank=0, shuffle=False))
