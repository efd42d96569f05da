"""Detection backbones: what the papers' mmdetection / mmsegmentation backbones share, in plain PyTorch.

:class:`DetectionBackbone` is the base of ``dla.create_backbone('ResNet_dlal')``,
``rlanet.create_backbone('RLA_ResNet')`` and ``dwnet.create_backbone('DWNet')``. It gives them mmdet's
``ResNet`` behaviour without needing OpenMMLab:

* ``frozen_stages``: ``_freeze_stages()`` stops the gradients of (and puts in eval mode) the stem when
  ``frozen_stages >= 0`` and the first ``frozen_stages`` stages (each backbone says what its stem and its
  stages are: :meth:`DetectionBackbone.frozen_modules`); ``train(mode)`` re-freezes them;
* ``norm_eval``: ``train(True)`` puts every BatchNorm in eval mode (running statistics frozen);
* ``pretrained`` / ``init_cfg``: ``pretrained='x.pth'`` is ``init_cfg=dict(type='Pretrained',
  checkpoint='x.pth')`` (as in mmdet; giving both is an error). ``init_weights()`` runs the backbone's
  official initialisation or loads that checkpoint (:meth:`DetectionBackbone.load_pretrained`).

Loading a checkpoint never skips keys silently: :meth:`DetectionBackbone.load_pretrained` loads what fits
(non-strict, as mmengine's ``load_checkpoint`` does) and returns a :class:`LoadReport` that names every key
that did not load and why (each backbone explains its known differences from the classification model:
:meth:`DetectionBackbone.explain`); the report is logged on ``logging.getLogger('common.backbone')``.
:func:`convert_checkpoint` writes a detection-ready checkpoint from a classification one (the paper's
``tools/convert_to_det.py``) and returns the same report.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .checkpoint import CheckpointError, read_state_dict, save_checkpoint, strip_module_prefix
from .registry import UnknownModelError

__all__ = ["DetectionBackbone", "LoadReport", "BackboneConfigError", "pretrained_init_cfg", "backbone_factory",
           "convert_checkpoint", "converter_main"]

logger = logging.getLogger(__name__)


class BackboneConfigError(ValueError):
    """Bad backbone arguments (an unknown name, ``pretrained`` together with ``init_cfg``, ...)."""


def pretrained_init_cfg(pretrained, init_cfg):
    """mmdet's rule: ``pretrained`` (a path) becomes ``init_cfg=dict(type='Pretrained', checkpoint=...)``."""
    if pretrained is not None and init_cfg is not None:
        raise BackboneConfigError("init_cfg and pretrained cannot be specified at the same time")
    if pretrained is not None:
        if not isinstance(pretrained, (str, os.PathLike)):
            raise BackboneConfigError(f"pretrained must be a path (str) or None, got {type(pretrained).__name__}")
        return dict(type="Pretrained", checkpoint=os.fspath(pretrained))
    return init_cfg


def backbone_factory(paper, backbones):
    """``create_backbone(name, **official_kwargs)`` of a paper: ``backbones`` maps the official class names to
    the classes; an unknown name raises :class:`common.registry.UnknownModelError` listing the valid ones."""
    backbones = dict(backbones)

    def create_backbone(name, **kwargs):
        if name not in backbones:
            raise UnknownModelError(f"unknown {paper} detection backbone {name!r}; choose one of: "
                                    f"{', '.join(backbones)}")
        return backbones[name](**kwargs)

    create_backbone.__doc__ = (f"Build a {paper} detection backbone by its official class name "
                               f"({', '.join(backbones)}) with its official keyword arguments.")
    create_backbone.backbones = tuple(backbones)
    create_backbone.classes = dict(backbones)  # name -> class (the OpenMMLab plugins subclass them)
    return create_backbone


@dataclass
class LoadReport:
    """What loading a state dict into a backbone did: ``loaded`` keys, and for every key that did not load
    its reason: ``missing`` (the backbone's keys absent from the checkpoint: they keep their init),
    ``unexpected`` (checkpoint keys the backbone does not have), ``mismatched`` (same key, other shape:
    ``{key: (checkpoint shape, backbone shape, reason)}``), ``renamed`` (``{checkpoint key: backbone key}``
    applied by a conversion)."""

    source: str = "state dict"
    target: str = "backbone"
    loaded: list = field(default_factory=list)
    missing: dict = field(default_factory=dict)
    unexpected: dict = field(default_factory=dict)
    mismatched: dict = field(default_factory=dict)
    renamed: dict = field(default_factory=dict)

    @property
    def complete(self):
        """Every key of the backbone was loaded."""
        return not self.missing and not self.mismatched

    def format(self, max_list=None):
        """The report as text: a summary line, then one line per key that did not load (``max_list``: at most
        that many per group), grouped under the same reason."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [f"{self.source} -> {self.target}: {len(self.loaded)} of {total} backbone keys loaded"
                 + (f", {len(self.renamed)} renamed" if self.renamed else "")
                 + (f", {len(self.missing)} missing" if self.missing else "")
                 + (f", {len(self.mismatched)} with another shape" if self.mismatched else "")
                 + (f", {len(self.unexpected)} checkpoint keys not used" if self.unexpected else "")]

        def group(title, items):
            by_reason = {}
            for key, (text, reason) in items:
                by_reason.setdefault(reason, []).append(text)
            for reason, texts in by_reason.items():
                shown = texts if max_list is None else texts[:max_list]
                lines.append(f"  {title} ({len(texts)}): {reason}")
                lines.extend(f"    {t}" for t in shown)
                if len(shown) < len(texts):
                    lines.append(f"    ... and {len(texts) - len(shown)} more")

        group("renamed", [(k, (f"{k} -> {v}", "same tensor under the detection backbone's name"))
                          for k, v in self.renamed.items()])
        group("shape mismatch, not loaded", [
            (k, (f"{k}: checkpoint {tuple(c)} vs backbone {tuple(m)}", r)) for k, (c, m, r) in self.mismatched.items()])
        group("missing from the checkpoint, left at their init", [(k, (k, r)) for k, r in self.missing.items()])
        group("in the checkpoint, not in the backbone", [(k, (k, r)) for k, r in self.unexpected.items()])
        return "\n".join(lines)

    def __str__(self):
        return self.format(max_list=12)

    def to_dict(self):
        """Plain values (stored in a converted checkpoint's ``meta``)."""
        return dict(source=self.source, target=self.target, loaded=len(self.loaded), missing=dict(self.missing),
                    unexpected=dict(self.unexpected), renamed=dict(self.renamed),
                    mismatched={k: dict(checkpoint=list(c), backbone=list(m), reason=r)
                                for k, (c, m, r) in self.mismatched.items()})


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else ()


class DetectionBackbone(nn.Module):
    """Base of the papers' detection backbones (see the module doc). A subclass sets
    ``self.frozen_stages``, ``self.norm_eval`` and ``self.init_cfg`` (:meth:`setup_backbone`), builds its
    modules under the official names, and implements :meth:`frozen_modules`, :meth:`official_init_` and
    ``forward(x) -> tuple`` of stage maps. It may override :meth:`explain` and :meth:`convert_state_dict`.
    """

    #: run the official init before loading a ``Pretrained`` checkpoint (what the official ``init_weights`` does)
    init_before_pretrained = False

    def setup_backbone(self, frozen_stages=-1, norm_eval=False, pretrained=None, init_cfg=None):
        self.frozen_stages = int(frozen_stages)
        self.norm_eval = bool(norm_eval)
        self.init_cfg = pretrained_init_cfg(pretrained, init_cfg)
        self.load_report = None

    # -- the subclass's part -------------------------------------------------------------------------
    def frozen_modules(self):
        """The modules (and parameters) that ``frozen_stages`` freezes, in order."""
        raise NotImplementedError

    def official_init_(self):
        """The official initialisation without a checkpoint."""
        raise NotImplementedError

    def explain(self, kind, key, checkpoint_shape=None, model_shape=None):
        """Why ``key`` did not load; ``kind``: ``'missing'``, ``'unexpected'`` or ``'mismatched'``."""
        if kind == "missing":
            return "no counterpart in the checkpoint"
        if kind == "unexpected":
            return "not a key of this backbone (a checkpoint of another architecture or variant?)"
        return "the checkpoint was made for another configuration"

    def convert_state_dict(self, state_dict):
        """``(state_dict, renamed)``: a classification state dict with the keys renamed to the detection
        backbone's where only the name differs. The default renames nothing."""
        return dict(state_dict), {}

    # -- mmdet behaviour -----------------------------------------------------------------------------
    def _freeze_stages(self):
        for m in self.frozen_modules():
            if isinstance(m, nn.Parameter):
                m.requires_grad = False
                continue
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        """``nn.Module.train``, then the frozen stages back in eval mode and, with ``norm_eval`` and
        ``mode=True``, every BatchNorm in eval mode (mmdet's ``ResNet.train``)."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # -- weights -------------------------------------------------------------------------------------
    def init_weights(self, pretrained=None):
        """The official initialisation, or, with ``init_cfg=dict(type='Pretrained', checkpoint=path)`` (or
        ``pretrained=path`` here or at construction), load that checkpoint and log its :class:`LoadReport`
        (also kept as ``self.load_report``)."""
        cfg = pretrained_init_cfg(pretrained, None) if pretrained is not None else self.init_cfg
        cfgs = cfg if isinstance(cfg, (list, tuple)) else [cfg] if cfg else []
        ckpt = [c for c in cfgs if isinstance(c, dict) and c.get("type") == "Pretrained"]
        if not ckpt:
            self.official_init_()
            return None
        if self.init_before_pretrained:
            self.official_init_()
        self.load_report = self.load_pretrained(ckpt[-1]["checkpoint"], prefix=ckpt[-1].get("prefix"))
        return self.load_report

    def load_pretrained(self, checkpoint, prefix=None, convert=False, log=True):
        """Load a checkpoint file (or a state dict) non-strictly: every key whose name and shape match is
        loaded, the others are listed with their reason in the returned :class:`LoadReport` (logged at
        WARNING when a key did not load). The file is read safely (:func:`common.checkpoint.read_state_dict`:
        ``state_dict`` / ``model`` sub-dict, ``module.`` prefix dropped); ``prefix`` keeps only the keys under
        it (mmengine's ``Pretrained(prefix=...)``), stripped. ``convert=True`` first renames the keys whose
        name is all that differs (:meth:`convert_state_dict`)."""
        if isinstance(checkpoint, (str, os.PathLike)):
            source = os.fspath(checkpoint)
            state_dict = read_state_dict(source)
        else:
            source = "state dict"
            state_dict = strip_module_prefix(checkpoint)
        if prefix:
            p = prefix if prefix.endswith(".") else prefix + "."
            state_dict = {k[len(p):]: v for k, v in state_dict.items() if k.startswith(p)}
        state_dict, report = self._prepare(state_dict, source, convert)
        own = self.state_dict()
        with torch.no_grad():
            for k in report.loaded:
                own[k].copy_(state_dict[k])
        if log:
            level = logging.INFO if report.complete and not report.unexpected else logging.WARNING
            logger.log(level, "%s", report.format(max_list=20))
        return report

    def match_state_dict(self, state_dict, source="state dict", convert=False):
        """The :class:`LoadReport` of loading ``state_dict`` (nothing is loaded)."""
        return self._prepare(state_dict, source, convert)[1]

    def _prepare(self, state_dict, source, convert):
        state_dict = self.adapt_state_dict(dict(state_dict))
        renamed = {}
        if convert:
            state_dict, renamed = self.convert_state_dict(state_dict)
        report = LoadReport(source=source, target=type(self).__name__, renamed=renamed)
        own = self.state_dict()
        for k, v in own.items():
            if k not in state_dict:
                report.missing[k] = self.explain("missing", k, None, _shape(v))
            elif _shape(state_dict[k]) != _shape(v):
                c, m = _shape(state_dict[k]), _shape(v)
                report.mismatched[k] = (c, m, self.explain("mismatched", k, c, m))
            else:
                report.loaded.append(k)
        for k, v in state_dict.items():
            if k not in own:
                report.unexpected[k] = self.explain("unexpected", k, _shape(v), None)
        return state_dict, report

    def adapt_state_dict(self, state_dict):
        """Reshape what the official loader reshapes (e.g. a position embedding); the default: nothing."""
        return state_dict

    def converted_state_dict(self, state_dict, source="state dict"):
        """``(detection-ready state dict, report)``: the renamed classification keys that fit this backbone."""
        state_dict, report = self._prepare(state_dict, source, convert=True)
        return {k: state_dict[k] for k in report.loaded}, report


# --------------------------------------------------------------------------------------------------------
# The converters (<paper>/tools/convert_to_det.py)
# --------------------------------------------------------------------------------------------------------
def convert_checkpoint(backbone, src, dst):
    """Read the classification checkpoint ``src`` safely, keep what loads into ``backbone`` (with its renames)
    and write ``{'state_dict': ..., 'meta': {'report': ...}}`` to ``dst`` atomically (mmengine's
    ``Pretrained`` init and :meth:`DetectionBackbone.load_pretrained` read it). Returns the report."""
    state_dict, report = backbone.converted_state_dict(read_state_dict(src), source=os.fspath(src))
    if not state_dict:
        raise CheckpointError(f"{os.fspath(src)}: none of its keys fits {type(backbone).__name__} "
                              f"(is it a checkpoint of this model?)\n{report.format(max_list=8)}")
    meta = dict(converted_from=os.fspath(src), backbone=type(backbone).__name__, report=report.to_dict())
    save_checkpoint({"state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
                     "meta": meta}, dst)
    return report


def converter_main(argv, prog, description, choices, build):
    """The command line of a paper's ``tools/convert_to_det.py``: ``SRC DST [--arch ARCH]``; ``choices`` maps
    ``--arch`` values to a description, ``build(arch)`` makes the backbone. Prints the report; status 2 with
    one message on a bad input (nothing is written then)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("src", help="classification checkpoint (.pth / .pth.tar; 'state_dict' / 'model' key and "
                                    "'module.' prefix handled)")
    parser.add_argument("dst", help="detection-ready checkpoint to write")
    parser.add_argument("--arch", default=next(iter(choices)), choices=list(choices),
                        help="; ".join(f"{k}: {v}" for k, v in choices.items()))
    args = parser.parse_args(argv)
    try:
        backbone = build(args.arch)
        report = convert_checkpoint(backbone, args.src, args.dst)
    except (CheckpointError, BackboneConfigError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    print(f"wrote {args.dst}")
    return 0
