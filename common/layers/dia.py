"""The DIA-LSTM cell of DIANet (Huang et al., AAAI 2020), shared by every model that uses a DIA unit.

One cell is shared by all residual blocks of a stage. For block ``t`` with pooled branch ``a_t`` (B, C)::

    gates = F_ih(a_t) + F_hh(h_{t-1})          # (B, 4C), split as [i | f | g | o]
    c_t   = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t   = sigmoid(o) * sigmoid(c_t)          # sigmoid (not tanh) on the cell state

with ``F(z) = W2 relu(W1 z + b1) + b2``, ``W1: C -> C // r``, ``W2: C // r -> 4C``. Parameter names follow
the official code (``w_ih.0.seq.0.weight``, ...), so official checkpoints load with ``strict=True``.
"""
import torch
import torch.nn as nn

__all__ = ["DIAGateMLP", "DIALSTMCell"]


class DIAGateMLP(nn.Module):
    """``Linear(C, C // r) -> ReLU -> Linear(C // r, 4 * hidden)``; keys ``seq.0`` / ``seq.2``."""

    def __init__(self, in_features, hidden, reduction=4):
        super().__init__()
        mid = in_features // reduction
        if mid < 1:
            raise ValueError(f"DIA-LSTM width {in_features} is too small for reduction {reduction}")
        self.seq = nn.Sequential(
            nn.Linear(in_features, mid),
            nn.ReLU(inplace=True),
            nn.Linear(mid, 4 * hidden),
        )

    def forward(self, x):
        return self.seq(x)


class DIALSTMCell(nn.Module):
    """The modified LSTM cell of DIANet (one layer; input size == hidden size == C).

    ``forward(a, (h, c)) -> (h_new, c_new)``, all of shape ``(B, C)``. Both transforms are
    bottlenecked by ``reduction`` and both carry biases (two additive biases on the gates,
    like ``nn.LSTMCell``). The output is ``sigmoid(o) * sigmoid(c_new)``. ``init_state(a)`` gives the
    zero state in ``a``'s dtype and device.
    """

    def __init__(self, channels, reduction=4):
        super().__init__()
        self.channels = channels
        # ModuleLists of length one keep the official key names ``w_ih.0`` / ``w_hh.0``.
        self.w_ih = nn.ModuleList([DIAGateMLP(channels, channels, reduction)])
        self.w_hh = nn.ModuleList([DIAGateMLP(channels, channels, reduction)])

    def init_state(self, a):
        zeros = a.new_zeros(a.shape[0], self.channels)
        return zeros, zeros

    def forward(self, a, state):
        h, c = state
        gates = self.w_ih[0](a) + self.w_hh[0](h)
        i, f, g, o = gates.chunk(4, dim=1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.sigmoid(c_new)
        return h_new, c_new
