"""Layer attention: attention over the outputs of the blocks of a stage, instead of over channels.

Two families share the pieces here:

* MRLA (Fang et al., ICLR 2023; "static layer attention", SLA): every block ``t`` of a stage attends to the
  blocks before it. :class:`LightLayerAttention` is MRLA-light (one sigmoid gate per head, the earlier blocks
  summarised by the previous output), :class:`BaseLayerAttention` is MRLA-base (a softmax over the keys of
  all earlier blocks).
* DLA (Wang et al., IJCAI 2024; "dynamic layer attention"): the same attention, plus a recurrent
  :class:`DSUCell` (dynamic sharing unit) per stage whose context refreshes what the earlier blocks
  contributed before block ``t`` attends to it. :class:`DLALightStage` (DLA-L) and :class:`DLABaseStage`
  (DLA-B) run a stage of blocks with its DSU.

Shapes: ``x`` is ``(B, C, H, W)``; ``GAP`` is the global average pool ``(B, C)``; the heads have 32
channels each (``G = C / 32`` heads, channel ``c = g * 32 + j``); ``Conv1d_k`` is a 1-channel convolution
over the channel axis with ECA's adaptive kernel ``k`` (:func:`common.layers.attention.eca_kernel_size`:
64 -> 3, 128 ... 1024 -> 5, 2048 -> 7), zero padding, no bias; ``DW`` is a 3x3 depthwise convolution.

Module names give the official state_dict keys (``Wq``, ``Wk``, ``Wv``, ``lambda_t``, ``w_ih.0.seq.0``,
...); the attribute that holds the attention inside a module is a constructor argument because the official
code bases call it ``layer_attention`` (DLA CIFAR) or ``mrla`` (DLA ImageNet, MRLA), and the stage's
depthwise convolution ``excite`` (CIFAR, detection) or ``extict`` (ImageNet).

Deviations from the official code, none of which changes a number:

* zero DSU states are made with ``x.new_zeros`` (the input's dtype and device; officially
  ``torch.zeros(...).cuda()``);
* the DSU has no dropout module: officially it only feeds a second layer that does not exist (one layer),
  so it never changes the output;
* the attention is computed with ``einsum`` / broadcasting instead of ``view``/``rearrange`` chains, and
  DLA-B refreshes all stored keys and values of a step in one DSU call instead of one call per entry
  (the same products, up to float rounding);
* the depth-wise convolutions (``Wv`` and the stage's DW conv) are :class:`common.layers.conv.DepthwiseConv2d`
  (same keys; channels_last on CPU, where it is several times faster), and a DLA-L stage runs channels_last on
  CPU; MRLA-light broadcasts each head's gate over its channels instead of viewing ``V`` per head;
* ``fix_batch_context=True`` (off by default) gives each sample its own DSU context in the refresh; see
  :class:`DLALightStage`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.layers.attention import eca_kernel_size
from common.layers.conv import DepthwiseConv2d, cpu_channels_last
from common.layers.drop import drop_path_or_identity

__all__ = [
    "DSUGate", "DSUCell", "LightLayerAttention", "BaseLayerAttention", "LightLayerAttentionModule",
    "BaseLayerAttentionModule", "LightLayerAttentionBranch", "BaseLayerAttentionBranch",
    "DLALightStage", "DLABaseStage", "gap",
]


def gap(x):
    """Global average pool ``(B, C, H, W) -> (B, C)`` (the official ``AdaptiveAvgPool2d(1)``)."""
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _heads(channels, dim_perhead):
    if channels % dim_perhead:
        raise ValueError(f"layer attention: {channels} channels are not a multiple of {dim_perhead} channels "
                         f"per head (use the bottleneck block: 64/128/256 channels on CIFAR)")
    return channels // dim_perhead


# --------------------------------------------------------------------------------------------------------
# Dynamic sharing unit
# --------------------------------------------------------------------------------------------------------
class DSUGate(nn.Module):
    """``Linear(C, C // r) -> ReLU -> Linear(C // r, 3C)`` with biases; keys ``seq.0`` / ``seq.2``."""

    def __init__(self, channels, reduction):
        super().__init__()
        mid = channels // reduction
        if mid < 1:
            raise ValueError(f"DSU: {channels} channels are too few for reduction {reduction}")
        self.seq = nn.Sequential(nn.Linear(channels, mid), nn.ReLU(inplace=True), nn.Linear(mid, 3 * channels))

    def forward(self, x):
        return self.seq(x)


class DSUCell(nn.Module):
    """DLA's dynamic sharing unit: an LSTM-like cell without output gate (official ``DSU_block``, one layer).

    ``forward(x, (h, c)) -> (h', c')``::

        i, f, g = (F_ih(x) + F_hh(h)).chunk(3)       # this order
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(c')

    ``x`` is ``(B, C)``; ``h`` and ``c`` are ``(B, C)`` or ``(1, C)`` (one context broadcast to every sample,
    which is what the official refresh calls do). ``reduction`` r: 4 (CIFAR), 16 (ImageNet), 20 (detection).
    Keys: ``w_ih.0.seq.{0,2}``, ``w_hh.0.seq.{0,2}``.
    """

    def __init__(self, channels, reduction=4):
        super().__init__()
        self.channels = channels
        self.w_ih = nn.ModuleList([DSUGate(channels, reduction)])
        self.w_hh = nn.ModuleList([DSUGate(channels, reduction)])

    def init_state(self, x):
        zeros = x.new_zeros(x.shape[0], self.channels)
        return zeros, zeros

    def forward(self, x, state):
        h, c = state
        i, f, g = (self.w_ih[0](x) + self.w_hh[0](h)).chunk(3, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(c), c


# --------------------------------------------------------------------------------------------------------
# MRLA attention operators
# --------------------------------------------------------------------------------------------------------
class _LayerAttentionBase(nn.Module):
    """``Wq``, ``Wk`` (Conv1d_k over channels) and ``Wv`` (depthwise 3x3), in the official order."""

    def __init__(self, channels, dim_perhead=32, k_size=None):
        super().__init__()
        self.channels = channels
        self.heads = _heads(channels, dim_perhead)
        self.k_size = k_size = eca_kernel_size(channels) if k_size is None else k_size
        self.scale = 1.0 / math.sqrt(channels / self.heads)
        self.Wq = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.Wk = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)
        self.Wv = DepthwiseConv2d(channels, kernel_size=3, padding=1, bias=False)

    def _qkv(self, x):
        y = gap(x).unsqueeze(1)  # (B, 1, C)
        return self.Wq(y).squeeze(1), self.Wk(y).squeeze(1), self.Wv(x)

    def extra_repr(self):
        return f"channels={self.channels}, heads={self.heads}, k_size={self.k_size}"


class LightLayerAttention(_LayerAttentionBase):
    """MRLA-light: ``out_g = sigmoid(<Q_g, K_g> / sqrt(32)) * V_g`` with ``Q = Wq(GAP x)``, ``K = Wk(GAP x)``,
    ``V = Wv(x)`` (official ``light_layer_attention`` / ``mrla_light_layer``)."""

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self._qkv(x)
        attn = torch.sigmoid((q * k).view(b, self.heads, -1).sum(-1) * self.scale)  # (B, G)
        # each head's gate repeated over its channels, broadcast over H, W (any memory layout of v)
        return v * attn.repeat_interleave(c // self.heads, dim=1)[:, :, None, None]


class BaseLayerAttention(_LayerAttentionBase):
    """MRLA-base: block ``t`` attends with a softmax over the keys of blocks ``0..t`` of its stage.

    ``forward(x, K, V) -> (out, K', V')``: ``K`` ``(B, t, C)`` and ``V`` ``(B, t, C, H, W)`` are the keys and
    values carried from the earlier blocks (``None`` at the first block of a stage); ``K'``, ``V'`` append
    this block's ``k = Wk(GAP x)``, ``v = Wv(x)``. Per head ``g``:
    ``out_g = sum_j softmax_j(<q_g, K'_{j,g}> / sqrt(32)) V'_{j,g}`` (official ``base_layer_attention`` /
    ``mrla_base_layer``).
    """

    def forward(self, x, prev_k=None, prev_v=None):
        b, c, h, w = x.shape
        q, k, v = self._qkv(x)
        v = v.contiguous()  # the stored values are viewed per head below
        keys = k.unsqueeze(1) if prev_k is None else torch.cat((prev_k, k.unsqueeze(1)), dim=1)
        values = v.unsqueeze(1) if prev_v is None else torch.cat((prev_v, v.unsqueeze(1)), dim=1)
        t, g = keys.shape[1], self.heads
        logits = torch.einsum("bgd,btgd->bgt", q.view(b, g, -1), keys.view(b, t, g, -1)) * self.scale
        out = torch.einsum("bgt,btgx->bgx", logits.softmax(dim=-1), values.view(b, t, g, -1))
        return out.reshape(b, c, h, w), keys, values


# --------------------------------------------------------------------------------------------------------
# Official module wrappers (names) and the residual branches
# --------------------------------------------------------------------------------------------------------
class LightLayerAttentionModule(nn.Module):
    """``attn(x) + lambda_t * o`` with the learned per-channel ``lambda_t`` ``(C, 1, 1)`` (init ``randn``) and
    ``o`` the previous block's summary (official ``light_layer_attention_module`` / MRLA-light
    ``mrla_module``). ``attn_name`` is the attribute of the :class:`LightLayerAttention`."""

    def __init__(self, channels, attn_name="layer_attention", dim_perhead=32):
        super().__init__()
        self.attn_name = attn_name
        self.add_module(attn_name, LightLayerAttention(channels, dim_perhead))
        self.lambda_t = nn.Parameter(torch.randn(channels, 1, 1))

    def forward(self, x, prev):
        return getattr(self, self.attn_name)(x) + self.lambda_t * prev


class BaseLayerAttentionModule(nn.Module):
    """Holds a :class:`BaseLayerAttention` under ``attn_name`` (official ``base_layer_attention_module`` /
    MRLA-base ``mrla_module``); ``forward(x, K, V)`` as the operator's."""

    def __init__(self, channels, attn_name="layer_attention", dim_perhead=32):
        super().__init__()
        self.attn_name = attn_name
        self.add_module(attn_name, BaseLayerAttention(channels, dim_perhead))

    def forward(self, x, prev_k=None, prev_v=None):
        return getattr(self, self.attn_name)(x, prev_k, prev_v)


class LightLayerAttentionBranch(nn.Module):
    """DLA-L's residual layer-attention branch: ``x + DropPath(BN(LA(x, o)))`` (no ReLU). Keys:
    ``layer_attention.*`` (a :class:`LightLayerAttentionModule` whose operator is called ``attn_name``) and
    ``bn_layer_attention.*`` (official ``layer_attention`` of ``dla_l.py`` / ``resnet_dla_l.py``)."""

    def __init__(self, channels, drop_path=0.0, attn_name="layer_attention"):
        super().__init__()
        self.layer_attention = LightLayerAttentionModule(channels, attn_name)
        self.bn_layer_attention = nn.BatchNorm2d(channels)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x, prev):
        return x + self.drop_path(self.bn_layer_attention(self.layer_attention(x, prev)))


class BaseLayerAttentionBranch(nn.Module):
    """DLA-B's residual layer-attention branch: ``x + DropPath(ReLU(BN(LA(x, K, V))))``; returns the
    output and the grown ``K``, ``V`` (official ``layer_attention`` of ``dla_b.py``)."""

    def __init__(self, channels, drop_path=0.0, attn_name="layer_attention"):
        super().__init__()
        self.layer_attention = BaseLayerAttentionModule(channels, attn_name)
        self.bn_layer_attention = nn.BatchNorm2d(channels)
        self.drop_path = drop_path_or_identity(drop_path)

    def forward(self, x, prev_k=None, prev_v=None):
        out, keys, values = self.layer_attention(x, prev_k, prev_v)
        return x + self.drop_path(F.relu(self.bn_layer_attention(out))), keys, values


# --------------------------------------------------------------------------------------------------------
# DLA stages: a stage of blocks with its DSU
# --------------------------------------------------------------------------------------------------------
class _DLAStage(nn.Module):
    def __init__(self, blocks, branches, channels, reduction, fix_batch_context):
        super().__init__()
        self.layers = blocks
        self.attention = branches
        self.lstm = DSUCell(channels, reduction)
        self.fix_batch_context = bool(fix_batch_context)

    def _context(self, state):
        """The state the refresh calls use: each sample's own (fixed), or sample 0's for every sample
        (official: ``DSU(u, (h[-1], c[-1]))`` indexes the batch where it means the layer)."""
        if self.fix_batch_context:
            return state
        return state[0][:1], state[1][:1]

    def extra_repr(self):
        return f"fix_batch_context={self.fix_batch_context}"


class DLALightStage(_DLAStage):
    """A DLA-L stage (official ``Attention`` of ``dla_l.py`` / ``resnet_dla_l.py``). Per block ``t``::

        y, r   = block_t(x)                       # output and its shortcut (downsample(x) or x)
        (h, c) = DSU(GAP y, (h, c))               # context, zero before t = 0
        m      = DSU(GAP r, context(h, c))[0]     # refresh gate (B, C)
        o      = r * m + DW(r)                    # the refreshed previous output
        x      = branch_t(y, o)                   # y + DropPath(BN(LLA(y) + lambda_t * o))

    ``blocks`` (keys ``layers.*``) must return ``(output, shortcut)``; ``branches`` (``attention.*``) are
    :class:`LightLayerAttentionBranch`. ``dw_name``: ``'excite'`` or ``'extict'`` (the official spelling
    of each code base). Registration order: ``layers``, ``attention``, ``lstm``, DW.

    Batch context: officially the refresh uses the context of sample 0 for every sample of the batch, so
    the output of sample ``j != 0`` depends on sample 0 (also in eval). That is kept by default
    (``fix_batch_context=False``) so that checkpoints trained with the official code behave as trained;
    ``fix_batch_context=True`` gives every sample its own context (sample 0 is unchanged).
    """

    def __init__(self, blocks, branches, channels, reduction=4, dw_name="excite", fix_batch_context=False):
        super().__init__(blocks, branches, channels, reduction, fix_batch_context)
        self.dw_name = dw_name
        self.add_module(dw_name, DepthwiseConv2d(channels, 3, padding=1, bias=False))

    def forward(self, x):
        dw = getattr(self, self.dw_name)
        # on CPU the stage runs channels_last (its depth-wise convs are ~3x faster so, and one layout keeps the
        # element-wise ops contiguous); the same numbers
        x = cpu_channels_last(x)
        state = None
        for block, branch in zip(self.layers, self.attention):
            y, r = block(x)
            a = gap(y)
            state = self.lstm(a, self.lstm.init_state(a) if state is None else state)
            m = self.lstm(gap(r), self._context(state))[0]
            x = branch(y, r * m[:, :, None, None] + dw(r))
        return x


class DLABaseStage(_DLAStage):
    """A DLA-B stage (official ``Attention`` of ``dla_b.py``). Per block ``t``::

        y      = block_t(x)
        (h, c) = DSU(GAP y, (h, c))
        K_i    = K_i * DSU(K_i, context)[0]              for every stored i < t
        V_i    = V_i * DSU(GAP V_i, context)[0]          (broadcast over H, W)
        x, K, V = branch_t(y, K, V)                       # y + DropPath(ReLU(BN(MRLA-base)))

    The refreshed ``K``, ``V`` are what is carried on, so entry ``i`` is gated ``t - i`` times by step ``t``.
    ``blocks`` return their output only; ``branches`` are :class:`BaseLayerAttentionBranch`. No DW conv.
    ``fix_batch_context`` as in :class:`DLALightStage`.
    """

    def forward(self, x):
        state = keys = values = None
        for block, branch in zip(self.layers, self.attention):
            y = block(x)
            a = gap(y)
            state = self.lstm(a, self.lstm.init_state(a) if state is None else state)
            if keys is not None:
                keys, values = self._refresh(keys, values, self._context(state))
            x, keys, values = branch(y, keys, values)
        return x

    def _refresh(self, keys, values, ctx):
        b, t, c = keys.shape
        # one DSU call for the t keys and the t pooled values, entry-major: rows [k_0 .. k_{t-1}, v_0 .. v_{t-1}]
        inp = torch.cat((keys.transpose(0, 1), gap(values.flatten(0, 1)).view(b, t, c).transpose(0, 1)), 0)
        h, cc = ctx
        if h.shape[0] != 1:  # per-sample context: one copy per entry
            h, cc = h.repeat(2 * t, 1), cc.repeat(2 * t, 1)
        gate = self.lstm(inp.reshape(2 * t * b, c), (h, cc))[0].view(2, t, b, c).transpose(1, 2)  # (2, B, t, C)
        return keys * gate[0], values * gate[1][..., None, None]
