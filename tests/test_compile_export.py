"""Compile-clean and exportable: every registered model traces with ``torch.compile(fullgraph=True)`` (no graph
break) and matches eager; DAC-DETR's inference path too; the deformable-attention custom op passes
``torch.library.opcheck``; the models export to ONNX (``torch.onnx.export(..., dynamo=True)``) and ONNX Runtime
gives PyTorch's outputs.

Graph breaks are found with the cheap ``eager`` / ``aot_eager`` backends (``fullgraph=True`` raises on the first
break); inductor's numerics are checked for a few small representative models. The classifier cases are the
contract's (tests/test_model_contract.py: one small build per constructor / code path); the sweep over all of
them is ``slow``, one representative per paper runs always.
"""
import argparse
import io
import os
import warnings

import pytest
import torch

import test_model_contract as contract
from common.fingerprint import det_init_
from dacdetr.main import get_args_parser
from dacdetr.models.deformable_detr import build as build_detr
from dacdetr.models.ms_deform_attn import MSDeformAttn
from dacdetr.models.ops import level_start_index, ms_deform_attn, ms_deform_attn_core_pytorch
from dacdetr.util.misc import NestedTensor

CASES = {f"{c.registry.name}:{c.name}": c for c in contract.ALL}
# one per paper and code family: the recurrent cells (DIA-LSTM, DSU, RLA), the dynamic depth-wise convs
REPRESENTATIVE = ["dianet:dia_resnet164", "dla:dla_l110", "dwnet:i_dynamic_dwnet_tiny", "rlanet:rla_mobilenetv2"]
DETR_FLAGS = ["--with_box_refine", "--two_stage", "--dropout", "0.0", "--mixed_selection", "--look_forward_twice",
              "--enc_layers", "1", "--dec_layers", "2", "--dim_feedforward", "64", "--num_queries_one2one", "20",
              "--device", "cpu"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(name, train=False):
    case = CASES[name]
    torch.manual_seed(0)
    model = contract._small(case)
    return model.train(train), contract._x(size=case.size, batch=2)


def _params(names):
    return [pytest.param(n, marks=() if n in REPRESENTATIVE else pytest.mark.slow) for n in names]


# ------------------------------------------------------------------------------ classifiers: fullgraph
@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_classifier_fullgraph_eval(name):
    model, x = _model(name)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_classifier_fullgraph_train_step(name):
    """Training mode (batch statistics, the models' own dropout / drop path under the same seed) forward and
    backward through AOTAutograd: same loss and gradients as eager."""
    model, x = _model(name, train=True)
    target = torch.tensor([1, 3])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.manual_seed(1)
    loss = torch.nn.functional.cross_entropy(compiled(x), target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.load_state_dict(state)  # the compiled step updated the BN running stats
    torch.manual_seed(1)
    ref_loss = torch.nn.functional.cross_entropy(model(x), target)
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dianet:dia_resnet164", "dwnet:dynamic_dwnet_tiny"])
def test_classifier_inductor_matches_eager(name):
    model, x = _model(name)
    compiled = torch.compile(model, fullgraph=True)  # inductor (C++ on CPU)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ deformable attention op
def _msda_case(B=2, Lq=5, M=2, D=4, shapes=((6, 7), (3, 4), (2, 2)), P=3, dtype=torch.float64, seed=0,
               requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=torch.float64)
    loc = torch.rand(B, Lq, M, L, P, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(B, Lq, M, L, P, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(requires_grad) for t in (value, loc, attn)]


@pytest.mark.parametrize("dtype,requires_grad", [(torch.float64, True), (torch.float32, True),
                                                 (torch.float32, False)])
def test_msda_custom_op_opcheck(dtype, requires_grad):
    value, loc, attn = _msda_case(dtype=dtype, requires_grad=requires_grad)
    flat = [6, 7, 3, 4, 2, 2]
    torch.library.opcheck(torch.ops.layerzoo.ms_deform_attn.default, (value, flat, loc, attn))


def test_msda_custom_op_opcheck_partial_grads():
    """Only the value needs a gradient (the backward op skips the others)."""
    value, loc, attn = _msda_case(seed=1)
    torch.library.opcheck(torch.ops.layerzoo.ms_deform_attn.default,
                          (value, [6, 7, 3, 4, 2, 2], loc.detach(), attn.detach()))


def test_msda_custom_op_grads_match_reference():
    shapes = ((6, 7), (3, 4), (2, 2))
    ins = _msda_case(seed=2)
    ref_ins = [t.detach().clone().requires_grad_(True) for t in ins]
    out = ms_deform_attn(ins[0], shapes, None, ins[1], ins[2])
    ref = ms_deform_attn_core_pytorch(ref_ins[0], torch.tensor(shapes), ref_ins[1], ref_ins[2])
    grad_out = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, ins, grad_out)
    ref_grads = torch.autograd.grad(ref, ref_ins, grad_out)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)
    # the (L, 2) tensor form of the sizes (eager) goes to the same op
    torch.testing.assert_close(ms_deform_attn(ins[0], torch.tensor(shapes), None, ins[1], ins[2]), out)


def test_msda_custom_op_level_checks():
    value, loc, attn = _msda_case(requires_grad=False)
    with pytest.raises(ValueError, match="levels"):
        ms_deform_attn(value, ((6, 7), (3, 4)), None, loc, attn)
    assert level_start_index(((6, 7), (3, 4), (2, 2))).tolist() == [0, 42, 54]


def _msda_module_inputs(dtype=torch.float32):
    shapes = ((6, 7), (3, 4), (2, 2), (1, 1))
    g = torch.Generator().manual_seed(4)
    S = sum(h * w for h, w in shapes)
    src = torch.randn(2, S, 32, generator=g, dtype=dtype)
    query = torch.randn(2, 7, 32, generator=g, dtype=dtype)
    ref = torch.rand(2, 7, 4, 4, generator=g, dtype=dtype) * 0.5 + 0.25
    mask = torch.zeros(2, S, dtype=torch.bool)
    mask[1, -3:] = True
    return query, ref, src, shapes, level_start_index(shapes), mask


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_msdeformattn_fullgraph_matches_eager(backend):
    torch.manual_seed(0)
    attn = MSDeformAttn(d_model=32, n_levels=4, n_heads=4, n_points=2)
    with torch.no_grad():  # non-trivial offsets and weights
        attn.sampling_offsets.weight.normal_(0, 0.2)
        attn.attention_weights.weight.normal_(0, 0.2)
    query, ref, src, shapes, starts, mask = _msda_module_inputs()
    compiled = torch.compile(attn, backend=backend, fullgraph=True)
    out = compiled(query, ref, src, shapes, starts, mask)
    eager = attn(query, ref, src, shapes, starts, mask)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), list(attn.parameters()))
    ref_grads = torch.autograd.grad(eager.square().sum(), list(attn.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ DAC-DETR inference path
@pytest.fixture(scope="module")
def detr():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_detr(get_args_parser().parse_args(DETR_FLAGS))
    det_init_(model)
    return model.eval()


def _det_input():
    img = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 80:] = True  # a padded image
    img[1, :, :, 80:] = 0
    return img, mask


class DetrOutputs(torch.nn.Module):
    """Tensors in, tensors out: ``(images, mask) -> (pred_logits, pred_boxes)`` (the exportable interface)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, mask):
        out = self.model(NestedTensor(images, mask))
        return out["pred_logits"], out["pred_boxes"]


@pytest.mark.slow
def test_detr_inference_fullgraph_matches_eager(detr):
    img, mask = _det_input()
    compiled = torch.compile(detr, backend="eager", fullgraph=True)
    with torch.no_grad():
        out = compiled(NestedTensor(img, mask))
        ref = detr(NestedTensor(img, mask))
    for key in ("pred_logits", "pred_boxes", "pred_logits_cdecoder", "pred_boxes_cdecoder"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)
    torch.testing.assert_close(out["enc_outputs"]["anchors"], ref["enc_outputs"]["anchors"], rtol=0, atol=0)


# ------------------------------------------------------------------------------ ONNX
def _onnx_run(module, inputs):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(inputs), dynamo=True, optimize=False, verbose=False)
    buf = io.BytesIO()
    program.save(buf)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feeds)]


# the export is slow (tracing + translation of every node): one fast case, the families as slow
ONNX_FAST = ["dianet:dia_resnet164"]
# (resnet50_dla_l: DLA-L's cells as in dla_l110; rlalstm_resnet50: plain LSTM ops; both export too, ~1.5 min more)
ONNX_FAMILIES = ["dla:dla_b110", "dla:dla_l110", "dwnet:dwnet_tiny", "dwnet:dynamic_dwnet_tiny",
                 "dwnet:i_dynamic_dwnet_tiny", "rlanet:rla_resnet50", "rlanet:rla_mobilenetv2"]


@pytest.mark.parametrize("name", ONNX_FAST + [pytest.param(n, marks=pytest.mark.slow) for n in ONNX_FAMILIES])
def test_classifier_onnx_matches_pytorch(name):
    model, x = _model(name)
    (got,) = _onnx_run(model, [x])
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_detr_inference_onnx_matches_pytorch(detr):
    img, mask = _det_input()
    module = DetrOutputs(detr).eval()
    got = _onnx_run(module, [img, mask])
    with torch.no_grad():
        ref = module(img, mask)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ --compile in the scripts
def test_compile_flags_in_every_training_script():
    from common import engine
    from dacdetr import main as detr_main
    from dla import train as dla_train
    from dwnet import main as dwnet_main
    from dianet import cifar as dia_cifar
    from dla import cifar as dla_cifar
    from rlanet import train as rla_train
    from rlanet import train_light as rla_light

    parsers = {"dianet/cifar.py": dia_cifar.get_parser, "dla/cifar.py": dla_cifar.get_parser,
               "dla/train.py": dla_train.get_parser, "rlanet/train.py": rla_train.get_parser,
               "rlanet/train_light.py": rla_light.get_parser, "dwnet/main.py": dwnet_main.get_parser,
               "dacdetr/main.py": detr_main.get_args_parser}
    for where, parser in parsers.items():
        args, _ = parser().parse_known_args(["--compile", "--compile-mode", "reduce-overhead", "--cfg", "x.yaml"])
        assert (args.compile, args.compile_mode, args.compile_backend) == (True, "reduce-overhead", "inductor"), where
    assert engine.compile_model(torch.nn.Identity(), engine.compile_args(args)) is not None
    plain = torch.nn.Linear(2, 2)
    assert engine.compile_model(plain, None) is plain
    with pytest.raises(ValueError, match="inductor"):
        engine.compile_model(plain, argparse.Namespace(compile=True, compile_mode="reduce-overhead",
                                                       compile_backend="eager"))


@pytest.mark.slow
def test_dla_train_runs_compiled(tmp_path):
    """dla/train.py trains and validates (two steps) through torch.compile; aot_eager keeps it quick on CPU."""
    from conftest import run_script

    proc = run_script([os.path.join("dla", "train.py"), str(tmp_path / "data"), "--demo", "-a", "resnet50_dla_l",
                       "--img-size", "32", "-b", "8", "-j", "0", "--steps-per-epoch", "2", "-p", "0", "--seed", "1",
                       "--epochs", "1", "--work-dir", str(tmp_path / "w"), "--compile", "--compile-backend",
                       "aot_eager"], check=True)
    assert "Traceback" not in proc.stderr
    assert list((tmp_path / "w").rglob("checkpoint.pth.tar"))
