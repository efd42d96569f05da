"""common.layers: SE / ECA, FrozenBatchNorm2d, DropPath and the Swin blocks, each against an
explicit float64 reference written here, plus the state_dict layouts the papers' checkpoints use
(key names and shapes of the official DLA and RLA-Net state_dicts)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.layers.attention import ECAModule, SEModule, eca_kernel_size
from common.layers.drop import DropPath, drop_path, drop_path_or_identity
from common.layers.norm import FrozenBatchNorm2d
from common.layers.swin import Mlp, PatchEmbed, PatchMerging, pad_nhwc, window_partition, window_reverse

f64 = torch.float64


def _layout(module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _gap_loop(x):
    """Per-channel means, one (b, c) at a time."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, dtype=x.dtype)
    for i in range(b):
        for j in range(c):
            total = 0.0
            for y in range(h):
                for z in range(w):
                    total += x[i, j, y, z].item()
            out[i, j] = total / (h * w)
    return out


def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


# ------------------------------------------------------------------------------------------- SE
def _se_reference(x, w1, w2):
    s = _gap_loop(x)
    b, c = s.shape
    rd = w1.shape[0]
    gate = torch.zeros(b, c, dtype=f64)
    for i in range(b):
        hidden = [max(0.0, sum(w1[r, j].item() * s[i, j].item() for j in range(c))) for r in range(rd)]
        for j in range(c):
            gate[i, j] = _sigmoid(sum(w2[j, r].item() * hidden[r] for r in range(rd)))
    return x * gate[:, :, None, None]


def test_se_linear_and_conv_layouts_match_the_loop():
    torch.manual_seed(0)
    x = torch.randn(2, 32, 3, 5, dtype=f64)
    lin = SEModule(32, reduction=16).double()
    conv = SEModule(32, reduction=16, layout="conv").double()
    with torch.no_grad():
        conv.se[1].weight.copy_(lin.fc[0].weight[:, :, None, None])
        conv.se[3].weight.copy_(lin.fc[2].weight[:, :, None, None])
    ref = _se_reference(x, lin.fc[0].weight, lin.fc[2].weight)
    torch.testing.assert_close(lin(x), ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(conv(x), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("channels", [64, 128, 256, 512, 1024, 2048])
def test_se_key_layouts_of_the_papers(channels):
    rd = channels // 16
    # DLA CIFAR senet / ImageNet resnet*_se, RLA-Net *_se: `<block>.se.fc.{0,2}.weight`, no bias
    block = nn.Module()
    block.se = SEModule(channels)
    assert _layout(block) == [("se.fc.0.weight", (rd, channels)), ("se.fc.2.weight", (channels, rd))]
    # DLA senet_50 (torchvision ResNet-50 + conv SE): `<block>.se.se.{1,3}.weight`
    block.se = SEModule(channels, layout="conv")
    assert _layout(block) == [("se.se.1.weight", (rd, channels, 1, 1)), ("se.se.3.weight", (channels, rd, 1, 1))]


def test_se_options_and_errors():
    assert _layout(SEModule(64, bias=True, name="excitation")) == [
        ("excitation.0.weight", (4, 64)), ("excitation.0.bias", (4,)),
        ("excitation.2.weight", (64, 4)), ("excitation.2.bias", (64,))]
    assert _layout(SEModule(64, rd_channels=8))[0] == ("fc.0.weight", (8, 64))
    with pytest.raises(ValueError, match="layout"):
        SEModule(64, layout="mlp")
    with pytest.raises(ValueError, match="too few"):
        SEModule(8, reduction=16)


# ------------------------------------------------------------------------------------------ ECA
def _eca_reference(x, kernel):
    s = _gap_loop(x)
    b, c = s.shape
    k = kernel.numel()
    pad = (k - 1) // 2
    gate = torch.zeros(b, c, dtype=f64)
    for i in range(b):
        for j in range(c):
            acc = 0.0
            for t in range(k):
                src = j + t - pad
                if 0 <= src < c:                       # zero padding at both ends of the channel axis
                    acc += kernel[t].item() * s[i, src].item()
            gate[i, j] = _sigmoid(acc)
    return x * gate[:, :, None, None]


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_eca_matches_the_loop(k):
    torch.manual_seed(k)
    x = torch.randn(2, 12, 4, 3, dtype=f64)
    eca = ECAModule(k_size=k).double()
    with torch.no_grad():
        eca.conv.weight.normal_()
    ref = _eca_reference(x, eca.conv.weight.view(-1))
    torch.testing.assert_close(eca(x), ref, rtol=1e-12, atol=1e-13)


def test_eca_kernel_sizes_and_key_layouts():
    # ECA-Net rule; the DLA sheet: C=64->3, 128->5, 256->5, 512->5, 1024->5, 2048->7
    assert [eca_kernel_size(c) for c in (64, 128, 256, 512, 1024, 2048)] == [3, 5, 5, 5, 5, 7]
    # DLA CIFAR ecanet (adaptive): layer1/2/3 (C = 64/128/256) -> (1, 1, 3/5/5)
    assert [_layout(ECAModule(c)) for c in (64, 128, 256)] == [
        [("conv.weight", (1, 1, 3))], [("conv.weight", (1, 1, 5))], [("conv.weight", (1, 1, 5))]]
    # DLA / RLA-Net ImageNet *_eca: k_size=[5, 5, 5, 7] by stage, the same as the adaptive rule
    for c, k in zip((256, 512, 1024, 2048), (5, 5, 5, 7)):
        assert _layout(ECAModule(c, k_size=k)) == _layout(ECAModule(c)) == [("conv.weight", (1, 1, k))]
    # RLA-Net MobileNetV2: k = 1 when C < 96, else 3, at `conv.3` of each block
    assert _layout(ECAModule(24, k_size=1)) == [("conv.weight", (1, 1, 1))]
    assert _layout(ECAModule(96, k_size=3)) == [("conv.weight", (1, 1, 3))]
    for bad in (dict(), dict(k_size=4), dict(k_size=0)):
        with pytest.raises(ValueError, match="ECAModule"):
            ECAModule(**bad)


# ------------------------------------------------------------------------------ FrozenBatchNorm2d
def test_frozen_batchnorm_formula_buffers_and_loading():
    import torchvision

    from dacdetr.models.backbone import FrozenBatchNorm2d as detr_fbn
    assert FrozenBatchNorm2d is torchvision.ops.misc.FrozenBatchNorm2d is detr_fbn
    bn = FrozenBatchNorm2d(3)
    assert bn.eps == 1e-5 and list(dict(bn.named_parameters())) == []
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]

    # a BatchNorm2d checkpoint (with num_batches_tracked) loads strictly
    src = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        src.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        src.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        src.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
        src.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    src.num_batches_tracked.fill_(7)
    assert "num_batches_tracked" in src.state_dict()
    bn = bn.double()
    bn.load_state_dict(src.state_dict(), strict=True)
    assert torch.equal(bn.running_var, src.running_var)

    x = torch.randn(2, 3, 4, 5, dtype=f64)
    ref = torch.empty_like(x)
    for c in range(3):
        w, b = src.weight[c].item(), src.bias[c].item()
        m, v = src.running_mean[c].item(), src.running_var[c].item()
        ref[:, c] = (x[:, c] - m) / math.sqrt(v + 1e-5) * w + b
    torch.testing.assert_close(bn(x), ref, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(bn(x), src.eval()(x), rtol=1e-13, atol=1e-14)


# -------------------------------------------------------------------------------------- DropPath
def test_drop_path_is_timms_and_schedulable():
    import timm.layers

    from common import engine
    from dacdetr.models.swin import SwinTransformer
    assert DropPath is timm.layers.DropPath and drop_path is timm.layers.drop_path
    assert isinstance(drop_path_or_identity(0.0), nn.Identity)
    dp = drop_path_or_identity(0.25)
    assert isinstance(dp, DropPath) and dp.drop_prob == 0.25

    x = torch.randn(64, 3, 2, dtype=f64) + 5.0
    assert torch.equal(dp.eval()(x), x)
    torch.manual_seed(0)
    y = dp.train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all()) and 0 < int(dropped.sum()) < 64   # whole samples only
    torch.testing.assert_close(y[kept], x[kept] * (1.0 / 0.75), rtol=0, atol=0)

    # DAC-DETR's Swin uses it (block 0 of the linear schedule gets Identity), and set_drop_path reaches it
    swin = SwinTransformer(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=2, out_indices=(1,),
                           drop_path_rate=0.3)
    paths = [blk.drop_path for layer in swin.layers for blk in layer.blocks]
    assert isinstance(paths[0], nn.Identity) and all(isinstance(p, DropPath) for p in paths[1:])
    assert [p.drop_prob for p in paths[1:]] == pytest.approx([0.1, 0.2, 0.3])
    engine.set_drop_path(swin, 0.05)
    assert all(p.drop_prob == 0.05 for p in paths[1:])


# ---------------------------------------------------------------------------------- Swin blocks
def _merge_reference(x, h, w, m):
    """Gather the 2x2 neighbourhood by index (zero outside the map), then LayerNorm and Linear."""
    b, _, c = x.shape
    grid = x.view(b, h, w, c)
    ho, wo = (h + 1) // 2, (w + 1) // 2
    out = torch.zeros(b, ho * wo, 2 * c, dtype=f64)
    for i in range(b):
        for r in range(ho):
            for s in range(wo):
                parts = []
                for dr, ds in ((0, 0), (1, 0), (0, 1), (1, 1)):
                    y, z = 2 * r + dr, 2 * s + ds
                    parts.append(grid[i, y, z] if y < h and z < w else torch.zeros(c, dtype=f64))
                v = torch.cat(parts)
                mean = v.sum() / v.numel()
                var = ((v - mean) ** 2).sum() / v.numel()
                v = (v - mean) / torch.sqrt(var + m.norm.eps) * m.norm.weight + m.norm.bias
                out[i, r * wo + s] = m.reduction.weight @ v
    return out


@pytest.mark.parametrize("h,w", [(4, 6), (5, 7), (3, 2)])
def test_patch_merging_matches_the_index_gather(h, w):
    torch.manual_seed(h * 10 + w)
    m = PatchMerging(3).double()
    with torch.no_grad():
        m.norm.weight.normal_()
        m.norm.bias.normal_()
    x = torch.randn(2, h * w, 3, dtype=f64)
    ref = _merge_reference(x, h, w, m)
    torch.testing.assert_close(m(x, h, w), ref, rtol=1e-12, atol=1e-12)
    fixed = PatchMerging(3, input_resolution=(h, w)).double()
    fixed.load_state_dict(m.state_dict())
    torch.testing.assert_close(fixed(x), ref, rtol=1e-12, atol=1e-12)


def test_patch_merging_layout_and_errors():
    # official Swin / DWNet order: reduction (2C, 4C) before norm (4C)
    assert _layout(PatchMerging(96)) == [("reduction.weight", (192, 384)), ("norm.weight", (384,)),
                                         ("norm.bias", (384,))]
    with pytest.raises(ValueError, match="4x4 grid"):
        PatchMerging(3)(torch.zeros(1, 15, 3), 4, 4)
    with pytest.raises(ValueError, match="input_resolution"):
        PatchMerging(3)(torch.zeros(1, 16, 3))


def test_window_partition_reverse_and_padding():
    x = torch.arange(2 * 6 * 9 * 3, dtype=f64).view(2, 6, 9, 3)
    win = window_partition(x, 3)
    assert win.shape == (2 * 2 * 3, 3, 3, 3)
    # window k of image b covers rows 3*(k // 3) .. +3 and columns 3*(k % 3) .. +3
    for b in range(2):
        for k in range(6):
            r, c = 3 * (k // 3), 3 * (k % 3)
            assert torch.equal(win[b * 6 + k], x[b, r:r + 3, c:c + 3])
    assert torch.equal(window_reverse(win, 3, 6, 9), x)
    assert torch.equal(window_reverse(win.reshape(12, 9, 3), 3, 6, 9), x)
    with pytest.raises(ValueError, match="multiple of the window"):
        window_partition(x, 4)

    p = pad_nhwc(x, 4)
    assert p.shape == (2, 8, 12, 3)
    assert torch.equal(p[:, :6, :9], x) and not p[:, 6:].any() and not p[:, :, 9:].any()
    assert torch.equal(pad_nhwc(x, 3), x)


def test_patch_embed_padding_formats_and_layout():
    torch.manual_seed(0)
    pe = PatchEmbed(patch_size=4, in_chans=3, embed_dim=5).double()
    with torch.no_grad():
        pe.norm.weight.normal_()
        pe.norm.bias.normal_()
    assert _layout(pe) == [("proj.weight", (5, 3, 4, 4)), ("proj.bias", (5,)), ("norm.weight", (5,)),
                           ("norm.bias", (5,))]
    x = torch.randn(2, 3, 10, 13, dtype=f64)
    padded = torch.zeros(2, 3, 12, 16, dtype=f64)
    padded[:, :, :10, :13] = x
    conv = F.conv2d(padded, pe.proj.weight, pe.proj.bias, stride=4)            # (2, 5, 3, 4)
    mean = conv.mean(1, keepdim=True)
    var = ((conv - mean) ** 2).mean(1, keepdim=True)
    ref = (conv - mean) / torch.sqrt(var + 1e-5) * pe.norm.weight[:, None, None] + pe.norm.bias[:, None, None]
    out = pe(x)
    assert out.shape == (2, 5, 3, 4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)

    tokens = PatchEmbed(4, 3, 5, flatten=True).double()
    tokens.load_state_dict(pe.state_dict())
    torch.testing.assert_close(tokens(x), ref.flatten(2).transpose(1, 2), rtol=1e-12, atol=1e-12)

    bare = PatchEmbed(4, 3, 5, norm=False).double()
    assert [k for k, _ in _layout(bare)] == ["proj.weight", "proj.bias"]
    bare.proj.load_state_dict(pe.proj.state_dict())
    torch.testing.assert_close(bare(x), conv, rtol=0, atol=0)

    fixed = PatchEmbed(4, 3, 5, flatten=True, img_size=8)
    assert fixed.patches_resolution == (2, 2) and fixed(torch.zeros(1, 3, 8, 8)).shape == (1, 4, 5)
    with pytest.raises(ValueError, match="does not match the model's 8x8"):
        fixed(torch.zeros(1, 3, 8, 12))


def test_mlp_is_the_swin_mlp():
    torch.manual_seed(0)
    mlp = Mlp(6, 24, drop=0.0).double()
    assert _layout(mlp) == [("fc1.weight", (24, 6)), ("fc1.bias", (24,)), ("fc2.weight", (6, 24)),
                            ("fc2.bias", (6,))]
    x = torch.randn(3, 7, 6, dtype=f64)
    hidden = x @ mlp.fc1.weight.T + mlp.fc1.bias
    hidden = 0.5 * hidden * (1.0 + torch.erf(hidden / math.sqrt(2.0)))          # exact GELU
    torch.testing.assert_close(mlp(x), hidden @ mlp.fc2.weight.T + mlp.fc2.bias, rtol=1e-12, atol=1e-12)
