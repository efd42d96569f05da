"""RLA-ResNet / RLA-ResNeXt (official ``models/resnet_rla.py``: ``RLA_ResNet``, ``RLA_Bottleneck``).

A hidden state ``h`` with ``k = rla_channel`` channels runs beside the main network. Block ``t`` of stage
``s`` reads ``cat(x, h)`` and, after it::

    x_t = relu(bn3(conv3(...conv1(cat(x_{t-1}, h_{t-1})))) [-> se -> eca] + shortcut(x_{t-1}))
    h_t = recurrent_conv_s(tanh(BN_t(h_{t-1}' + conv_out_s(x_t))))

``h'`` is ``h`` average-pooled 2x2 in the first block of stages 2-4 (pooled inside the block); ``conv_out_s``
(1x1, 4p -> k) and ``recurrent_conv_s`` (3x3, k -> k) are shared by the blocks of a stage, ``BN_t`` is one
per block. ``h0 = 0`` after the stem. Head: ``cat(x_L, relu(bn2(h)))`` -> pool -> ``fc``.

``conv_out`` reads the block output **after** the residual add and the ReLU: officially the branch output
``y`` is returned after ``out += identity; out = relu(out)`` ran in place on the same tensor, so ``y`` is
``x_t`` (not the pre-add branch of the paper's figure). That is written out explicitly here.

State_dict keys, shapes and order are the official ones (``conv1, bn1, conv_outs, recurrent_convs, stages,
stage_bns, bn2, fc``), so official checkpoints load with ``strict=True``. Deviations, none of which changes
a number the official code can compute:

* ``rla_channel`` is honoured by every constructor (officially only ``rla_resnet50_eca`` passes it on; the
  default stays 32, the released checkpoints' value); ``num_classes`` is accepted everywhere;
* ``h0`` is ``x.new_zeros`` (the input's dtype and device; officially float32 on ``'cuda'`` when available);
* the 2x2 average pool of ``h`` uses ``ceil_mode=True``, so inputs whose size is not a multiple of 32 work
  (officially ``h + conv_out(x)`` fails on a size mismatch); at even sizes it is the same pool.

The paper's ablations (official ``resnet_rla_v1.py`` ... ``resnet_rla_gru.py``) are options of
:class:`RLAResNet` (``update``, ``conv_out_input``, ``head``, ``feed_h``, ``unshared``), one named variant per
official builder. Officially v2 / v4 / v6 cannot run in float64 (their float32 ``h0`` meets a float64 BN
first); with ``x.new_zeros`` they can, with the same numbers.

``features_only=True`` gives ``x`` after each stage (256/512/1024/2048 channels at strides 4-32, the
detection backbone's maps); its state_dict is the official detection backbone's (no ``bn2``, no ``fc``).
"""
import torch
import torch.nn as nn

from common import models as _core
from common.layers.attention import ECAModule, SEModule
from common.layers.conv import cpu_channels_last
from common.layers.init import init_resnet_
from common.models import ClassifierModel

from ._registry import REGISTRY, StageFeatures, conv1x1, conv3x3, rla_group_matcher

__all__ = ["RLABottleneck", "RLAResNet", "RLA_ResNet", "ConvLSTMCell", "ConvGRUCell", "UPDATES", "CONV_OUT_INPUTS",
           "HEADS"]


def _pool_h():
    return nn.AvgPool2d(2, stride=2, ceil_mode=True)


class ConvLSTMCell(nn.Module):
    """The ``lstm`` ablation's cell (official ``ConvLSTMCell_layer``): one 3x3 conv (no bias) on
    ``cat(input, h)`` -> gates ``i, f, o, g``; ``c' = f c + i g``, ``h' = o tanh(c')``. Key ``conv.weight``."""

    def __init__(self, input_dim, hidden_dim, kernel_size=3):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size, padding=kernel_size // 2,
                              bias=False)

    def forward(self, x, state):
        h, c = state
        i, f, o, g = torch.split(self.conv(torch.cat((x, h), dim=1)), self.hidden_dim, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvGRUCell(nn.Module):
    """The ``gru`` ablation's cell (official ``ConvGRUCell_layer``): 3x3 convs with bias and GroupNorm(1,
    eps 1e-6): ``r, u = sigmoid(GN(gate_conv(cat(x, h))))``, ``o = tanh(GN(output_conv(cat(x, r h))))``,
    ``h' = u h + (1 - u) o``."""

    def __init__(self, input_channel, output_channel, kernel_size=3):
        super().__init__()
        cin, pad = input_channel + output_channel, kernel_size // 2
        self.output_channel = output_channel
        self.gate_conv = nn.Conv2d(cin, 2 * output_channel, kernel_size, padding=pad)
        self.reset_gate_norm = nn.GroupNorm(1, output_channel, 1e-6, True)
        self.update_gate_norm = nn.GroupNorm(1, output_channel, 1e-6, True)
        self.output_conv = nn.Conv2d(cin, output_channel, kernel_size, padding=pad)
        self.output_norm = nn.GroupNorm(1, output_channel, 1e-6, True)

    def forward(self, x, h):
        r, u = torch.split(self.gate_conv(torch.cat((x, h), dim=1)), self.output_channel, dim=1)
        r, u = torch.sigmoid(self.reset_gate_norm(r)), torch.sigmoid(self.update_gate_norm(u))
        o = torch.tanh(self.output_norm(self.output_conv(torch.cat((x, r * h), dim=1))))
        return u * h + (1 - u) * o


class RLABottleneck(nn.Module):
    """``RLA_Bottleneck``: a ResNet bottleneck whose ``conv1`` reads ``cat(x, h)`` (``feed_h=False``: only
    ``x``, ablation ``rh``). ``forward(x, h) -> (x_t, branch, identity, h')``: the block output (after add
    and ReLU), the residual branch before the add, the shortcut, and ``h`` pooled when the block
    downsamples. ``unshared=True`` (ablation ``us``) gives the block its own ``conv_out``,
    ``recurrent_conv`` and ``bn_rla`` (registered after ``downsample``, as officially)."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, rla_channel=32, SE=False, ECA_size=None,
                 groups=1, base_width=64, dilation=1, reduction=16, feed_h=True, unshared=False):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out = planes * self.expansion
        self.feed_h = feed_h
        self.conv1 = conv1x1(inplanes + (rla_channel if feed_h else 0), width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, out)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        if unshared:
            self.conv_out = conv1x1(out, rla_channel)
            self.recurrent_conv = conv3x3(rla_channel, rla_channel)
            self.bn_rla = nn.BatchNorm2d(rla_channel)
        self.pool_h = _pool_h() if downsample is not None and stride != 1 else None
        self.se = SEModule(out, reduction) if SE else None
        self.eca = ECAModule(k_size=int(ECA_size)) if ECA_size is not None else None

    def forward(self, x, h):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(torch.cat((x, h), dim=1) if self.feed_h else x)
        out = self.relu(self.bn1(out))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.se is not None:
            out = self.se(out)
        if self.eca is not None:
            out = self.eca(out)
        branch = out
        out = self.relu(out + identity)
        if self.pool_h is not None:
            h = self.pool_h(h)
        return out, branch, identity, h


#: the ablations' options (constructor arguments of RLA_ResNet); the defaults are the paper's RLA-Net
UPDATES = ("pre", "add_after", "post", "lstm", "gru")
CONV_OUT_INPUTS = ("output", "identity", "branch")
HEADS = ("relu", "tanh", "none")


def _stage(m, s, x, h, c=None):
    """Stage ``s``: its blocks and the recurrent update after each."""
    if m.rla_default:  # the paper's model: h = rec(tanh(BN(h + conv_out(x_t))))
        conv_out, rec = m.conv_outs[s], m.recurrent_convs[s]
        for block, bn in zip(m.stages[s], m.stage_bns[s]):
            x, _, _, h = block(x, h)
            h = rec(m.tanh(bn(h + conv_out(x))))
        return x, h, c
    for t, block in enumerate(m.stages[s]):
        x, branch, identity, h = block(x, h)
        if c is not None and block.pool_h is not None:
            c = block.pool_h(c)
        v = x if m.conv_out_input == "output" else branch if m.conv_out_input == "branch" else identity
        if m.unshared:
            conv_out, rec, bn = block.conv_out, block.recurrent_conv, block.bn_rla
        else:
            conv_out, rec, bn = m.conv_outs[s], m.recurrent_convs[s], m.stage_bns[s][t]
        if m.update == "pre":
            h = rec(m.tanh(bn(h + conv_out(v))))
        elif m.update == "add_after":
            h = rec(m.tanh(bn(h))) + conv_out(v)
        elif m.update == "post":
            h = m.tanh(bn(rec(h + conv_out(v))))
        elif m.update == "lstm":
            h, c = rec(m.tanh(bn(conv_out(v))), (h, c))
        else:  # gru
            h = rec(m.tanh(bn(conv_out(v))), h)
    return x, h, c


class RLAResNet(ClassifierModel):
    """``RLA_ResNet(block, layers, num_classes, rla_channel, SE, ECA, zero_init_last_bn, groups,
    width_per_group)`` with the official arguments (``k_size`` is accepted as the official builders' name
    for ``ECA``, the per-stage ECA kernel sizes); then the contract's ``in_chans``, ``global_pool``,
    ``drop_rate`` (dropout before ``fc``; 0 as officially).

    The paper's ablations (official ``resnet_rla_v1 ... _gru.py``) are options of the same family; the
    defaults are RLA-Net:

    * ``update``: ``'pre'`` ``h = rec(tanh(BN(h + conv_out(v))))``; ``'add_after'`` (v2 / v4 / v6)
      ``h = rec(tanh(BN(h))) + conv_out(v)``; ``'post'`` (v1post) ``h = tanh(BN(rec(h + conv_out(v))))``;
      ``'lstm'`` / ``'gru'``: a ConvLSTM / ConvGRU cell per stage (keys ``recurrent_convs.s.*``) fed with
      ``tanh(BN(conv_out(v)))`` (the LSTM's cell state is pooled with ``h``);
    * ``conv_out_input`` (``v``): ``'output'`` the block output after the add and the ReLU (what the
      official code's aliasing feeds; v3's "x" is the same tensor), ``'identity'`` the shortcut (v5 / v6),
      ``'branch'`` the residual branch before the add (``us``);
    * ``head``: ``'relu'`` ``cat(x, relu(bn2(h)))``; ``'tanh'`` (v1) with tanh; ``'none'`` (v1post, lstm,
      gru) ``cat(x, h)`` and no ``bn2``;
    * ``feed_h=False`` (rh): the blocks read ``x`` only; ``unshared=True`` (us): every block has its own
      ``conv_out`` / ``recurrent_conv`` / ``bn_rla`` and the stage-level modules do not exist.
    """

    stage_names = ("stages.0", "stages.1", "stages.2", "stages.3")
    feature_children = ("conv1", "bn1", "act1", "maxpool", "conv_outs", "recurrent_convs", "stages",
                        "stage_bns", "tanh")
    feature_attrs = ("rla_channel", "rla_default", "update", "conv_out_input", "unshared")
    feature_cls = StageFeatures

    def __init__(self, layers=(3, 4, 6, 3), num_classes=1000, rla_channel=32, SE=False, ECA=None,
                 zero_init_last_bn=True, groups=1, width_per_group=64, replace_stride_with_dilation=None, *,
                 k_size=None, update="pre", conv_out_input="output", head="relu", feed_h=True, unshared=False,
                 in_chans=3, global_pool="avg", drop_rate=0.0):
        super().__init__()
        if k_size is not None:
            if ECA is not None:
                raise ValueError("RLA_ResNet: give the ECA kernel sizes once (ECA= or k_size=), not both")
            ECA = k_size
        ECA = [None] * 4 if ECA is None else list(ECA)
        if len(ECA) != 4 or len(layers) != 4:
            raise ValueError(f"RLA_ResNet: layers and ECA need 4 entries (one per stage), got layers={layers}, "
                             f"ECA={ECA}")
        for name, val, choices in (("update", update, UPDATES), ("conv_out_input", conv_out_input, CONV_OUT_INPUTS),
                                   ("head", head, HEADS)):
            if val not in choices:
                raise ValueError(f"RLA_ResNet: {name}={val!r} is not one of {', '.join(map(repr, choices))}")
        if unshared and update != "pre":
            raise ValueError("RLA_ResNet: unshared=True (ablation 'us') has the 'pre' update only")
        dilate = list(replace_stride_with_dilation or [False] * 3)
        if len(dilate) != 3:
            raise ValueError(f"replace_stride_with_dilation should be None or 3 booleans, got {dilate}")
        self.layers = tuple(layers)
        self.rla_channel = k = int(rla_channel)
        self.update, self.conv_out_input, self.head, self.feed_h, self.unshared = (
            update, conv_out_input, head, bool(feed_h), bool(unshared))
        self.rla_default = (update, conv_out_input, self.unshared) == ("pre", "output", False)
        self.groups, self.base_width = groups, width_per_group
        self.inplanes, self.dilation = 64, 1
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        built = [self._make_layer(64 * 2 ** i, layers[i], k, SE, ECA[i], 1 if i == 0 else 2,
                                  dilate[i - 1] if i else False) for i in range(4)]
        stages, bns, conv_outs, recs = zip(*built)
        if not unshared:
            self.conv_outs = nn.ModuleList(conv_outs)
            self.recurrent_convs = nn.ModuleList(recs)
        self.stages = nn.ModuleList(stages)
        if not unshared:
            self.stage_bns = nn.ModuleList(bns)
        self.tanh = nn.Tanh()
        if head != "none":
            self.bn2 = nn.BatchNorm2d(k)
            self.act2 = nn.ReLU(inplace=True) if head == "relu" else nn.Tanh()
        chs = [64 * 2 ** i * RLABottleneck.expansion for i in range(4)]
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"stages.{i}") for i, c in enumerate(chs)]
        self.init_head(chs[-1] + k, num_classes, global_pool, drop_rate)
        init_resnet_(self, zero_init_last_bn, RLABottleneck)

    def _make_layer(self, planes, blocks, k, SE, ECA_size, stride, dilate):
        out = planes * RLABottleneck.expansion
        conv_out = conv1x1(out, k)
        rec = (ConvLSTMCell(k, k) if self.update == "lstm" else ConvGRUCell(k, k) if self.update == "gru"
               else conv3x3(k, k))
        prev_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        kw = dict(rla_channel=k, SE=SE, ECA_size=ECA_size, groups=self.groups, base_width=self.base_width,
                  feed_h=self.feed_h, unshared=self.unshared)
        layers = [RLABottleneck(self.inplanes, planes, stride, downsample, dilation=prev_dilation, **kw)]
        self.inplanes = out
        layers += [RLABottleneck(out, planes, dilation=self.dilation, **kw) for _ in range(1, blocks)]
        return nn.ModuleList(layers), nn.ModuleList(nn.BatchNorm2d(k) for _ in range(blocks)), conv_out, rec

    # -- trunk: the recurrence across stages --------------------------------------------------------
    @staticmethod
    def trunk_fn(m, x, n_maps=None):
        """Stem and stages; returns the stage maps (the first ``n_maps``, or all four with ``h``)."""
        # on CPU (float32) the trunk runs channels_last, the layout oneDNN's kernels want (the same numbers)
        x = cpu_channels_last(m.maxpool(m.act1(m.bn1(m.conv1(x)))))
        h = cpu_channels_last(x.new_zeros(x.shape[0], m.rla_channel, x.shape[2], x.shape[3]))
        c = torch.zeros_like(h) if m.update == "lstm" else None
        ckpt = m.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        maps = []
        for s in range(len(m.stages)):
            if ckpt:
                x, h, c = _core.checkpoint(_stage, m, s, x, h, c, use_reentrant=False)
            else:
                x, h, c = _stage(m, s, x, h, c)
            maps.append(x)
            if n_maps is not None and len(maps) == n_maps:
                return maps
        return maps, h

    def forward_features(self, x):
        maps, h = self.trunk_fn(self, x)
        if self.head != "none":
            h = self.act2(self.bn2(h))
        return torch.cat((maps[-1], h), dim=1)

    @torch.jit.ignore
    def group_matcher(self, coarse=False):
        if self.unshared:
            return rla_group_matcher(coarse, ("conv1", "bn1"), (), ("bn2",), blocks=("stages",))
        return rla_group_matcher(coarse, ("conv1", "bn1"), ("conv_outs", "recurrent_convs"), ("bn2",))


@REGISTRY.register("RLA_ResNet")
def RLA_ResNet(layers=(3, 4, 6, 3), num_classes=1000, rla_channel=32, SE=False, ECA=None, zero_init_last_bn=True,
               groups=1, width_per_group=64, *, k_size=None, update="pre", conv_out_input="output", head="relu",
               feed_h=True, unshared=False, in_chans=3, global_pool="avg", drop_rate=0.0):
    """RLA-ResNet / RLA-ResNeXt (the official class; its builders are the named variants, ``rla_resnet50``
    = ``RLA_ResNet(layers=(3, 4, 6, 3))``), and the paper's ablations as options (see :class:`RLAResNet`)."""
    return RLAResNet(layers, num_classes, rla_channel, SE, ECA, zero_init_last_bn, groups, width_per_group,
                     k_size=k_size, update=update, conv_out_input=conv_out_input, head=head, feed_h=feed_h,
                     unshared=unshared, in_chans=in_chans, global_pool=global_pool, drop_rate=drop_rate)
