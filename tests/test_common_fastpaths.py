"""CPU fast paths against their reference paths: the channels_last depth-wise convolution
(:mod:`common.layers.conv`) against ``nn.Conv2d`` in float64, and models whose layers use it, in float32
(fast path) against float64 (reference path) in training mode, forward and backward."""
import pytest
import torch
import torch.nn as nn

from common.fingerprint import rel_err
from common.layers.conv import DepthwiseConv2d, cpu_channels_last, cpu_channels_last_enabled
from common.layers.layer_attention import LightLayerAttention


@pytest.mark.parametrize("k,bias", [(3, False), (7, True)])
def test_depthwise_conv_matches_conv2d_in_float64(k, bias):
    torch.manual_seed(0)
    fast = DepthwiseConv2d(16, k, padding=k // 2, bias=bias)
    ref = nn.Conv2d(16, 16, k, padding=k // 2, groups=16, bias=bias).double()
    ref.load_state_dict(fast.state_dict())  # same keys and shapes
    x = torch.randn(2, 16, 9, 11, dtype=torch.float64)
    x32 = x.float().requires_grad_()
    x64 = x.clone().requires_grad_()
    out32, out64 = fast(x32), ref(x64)
    assert out32.is_contiguous(memory_format=torch.channels_last)  # the fast path ran
    assert out32.shape == out64.shape
    assert rel_err(out32.double(), out64) < 1e-5
    g = torch.randn_like(out64)
    out32.backward(g.float())
    out64.backward(g)
    assert rel_err(x32.grad.double(), x64.grad) < 1e-5
    assert rel_err(fast.weight.grad.double(), ref.weight.grad) < 1e-5
    # other dtypes and layouts are plain nn.Conv2d
    assert cpu_channels_last(x) is x
    xc = x32.detach().contiguous(memory_format=torch.channels_last)
    assert cpu_channels_last(xc) is xc


def test_light_layer_attention_any_layout():
    """The per-head gate broadcast works on a channels_last value map (the depth-wise output)."""
    torch.manual_seed(0)
    attn = LightLayerAttention(64).double()
    x = torch.randn(2, 64, 5, 5, dtype=torch.float64)
    q, k, v = attn._qkv(x)
    gate = torch.sigmoid((q * k).view(2, 2, 32).sum(-1) * attn.scale)
    want = torch.stack([v[:, 32 * g:32 * (g + 1)] * gate[:, g, None, None, None] for g in range(2)], 1)
    assert rel_err(attn(x), want.reshape(2, 64, 5, 5)) <= 1e-12
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    assert rel_err(attn.float()(x32).double(), want.reshape(2, 64, 5, 5)) < 1e-5


def _step(model, x):
    torch.manual_seed(1)  # the same drop-path draws for every run
    out = model(x)
    out.square().sum().backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("paper,name,kwargs,size", [
    ("dla", "dla_l", dict(depth=20, num_classes=10), 32),
    ("dla", "dla_b", dict(depth=20, num_classes=10), 32),
    ("dwnet", "dwnet", dict(num_classes=10, embed_dim=32, depths=(1, 1, 1, 1), img_size=64), 64),
    ("rlanet", "RLA_ResNet", dict(num_classes=10, layers=(1, 1, 1, 1)), 64),
    ("rlanet", "RLA_MobileNetV2", dict(num_classes=10, width_mult=0.25, drop_rate=0.0), 64),
])
def test_float32_fast_path_matches_reference_path(paper, name, kwargs, size):
    """One training step in float32 through the fast path against the float32 reference path (NCHW
    ``nn.Conv2d``) and against float64: forward and every gradient."""
    import importlib

    torch.manual_seed(0)
    build = importlib.import_module(paper).create_model
    fast, slow, m64 = build(name, **kwargs).train(), build(name, **kwargs).train(), build(name, **kwargs).train()
    slow.load_state_dict(fast.state_dict())
    m64.double().load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    out_f, grads_f = _step(fast, x.float())
    with cpu_channels_last_enabled(False):
        out_s, grads_s = _step(slow, x.float())
    out_64, grads_64 = _step(m64, x)
    # the fast path agrees with the reference path, and is no further from float64 than it is
    assert rel_err(out_f, out_s) < 1e-4
    assert rel_err(out_f, out_64) <= 3 * rel_err(out_s, out_64) + 1e-6
    assert grads_f.keys() == grads_s.keys() == grads_64.keys()
    for n, g in grads_f.items():
        if grads_64[n].abs().max() > 1e-6:  # skip gradients that are zero up to rounding
            assert rel_err(g, grads_s[n]) < 1e-2, n
            assert rel_err(g, grads_64[n]) <= 10 * rel_err(grads_s[n], grads_64[n]) + 1e-3, n
