"""Tests of the PaddlePaddle port (dacdetr.paddle). They run in .venv-paddle (tools/paddle_env.sh), where
both paddle and torch import, so the Paddle model is compared with the PyTorch one in one process."""
import os
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # paddle's import-time notice about a missing ccache
    paddle = pytest.importorskip("paddle", reason="PaddlePaddle is not installed (bash tools/paddle_env.sh)")

paddle.set_device("cpu")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SMALL_FLAGS = ("--with_box_refine --two_stage --mixed_selection --look_forward_twice --dropout 0.0 --device cpu "
               "--hidden_dim 64 --nheads 4 --enc_layers 2 --dec_layers 2 --dim_feedforward 128 "
               "--num_queries_one2one 30 --pretrained_backbone_path none").split()
OFFICIAL_FLAGS = ("--with_box_refine --two_stage --dim_feedforward 2048 --num_queries_one2one 900 --dropout 0.0 "
                  "--mixed_selection --look_forward_twice --device cpu --pretrained_backbone_path none").split()


def parse(flags):
    from dacdetr.main import get_args_parser

    return get_args_parser().parse_args(list(flags))


def jitter_(model, seed=0):
    """Move every float parameter / buffer off its (often zero or constant) initial value, so a wrong
    mapping cannot hide behind equal initialisations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.add_(torch.randn(t.shape, generator=g) * 0.02)
    return model


def build_pair(flags=SMALL_FLAGS, seed=0):
    """(torch model, torch criterion, paddle model, paddle criterion) with the same weights."""
    from dacdetr.models import build_model as torch_build
    from dacdetr.paddle import build_model as paddle_build
    from dacdetr.paddle.convert import load_into, torch_to_paddle

    args = parse(flags)
    torch.manual_seed(seed)
    paddle.seed(seed)
    tm, tc, tpost = torch_build(args)
    jitter_(tm, seed)
    pm, pc, ppost = paddle_build(args)
    load_into(pm, torch_to_paddle(tm.state_dict()))
    return tm, tc, tpost, pm, pc, ppost


def rel(a, b):
    """max |a - b| / max |a| (0 for two empty arrays)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


@pytest.fixture(scope="session")
def small_pair():
    return build_pair()
