"""DAC-DETR against the official model's outputs on inputs the main fingerprint does not cover.

``tests/data/dacdetr/official_padded_cases.pt`` holds float64 outputs of the official code
(``det_init_`` weights, pure-PyTorch deformable-attention core) for:

* ``small_eval_padded2``: eval, two images of different sizes (3x200x260 and 3x256x320)
  zero-padded into one batch with a padding mask (masked features, valid ratios < 1, masked
  two-stage proposals);
* ``small_eval_odd1``: eval, one 3x224x288 image (odd feature-map sizes 7x9 and 4x5);
* ``small_train_padded2``: train-mode forward of the padded batch with targets; the contrastive
  denoising noise is drawn after ``torch.manual_seed(123)``, so the dn queries are identical;
* ``ep12_eval_padded2``: the padded batch through the full r50 ep12 configuration.

"small" is the ep12 flag set with 2 encoder / 2 decoder layers and 100 queries. Decoder outputs
are stored for the first 20 queries, encoder outputs for 64 tokens spread over all levels
(``token_index``); the official ``enc_outputs.*_cdecoder`` entries are the same tensors as the
plain ones and are checked by identity.
"""
import os

import pytest
import torch

from common.fingerprint import det_init_, det_input, rel_err
from dacdetr.main import get_args_parser
from dacdetr.models.deformable_detr import build
from dacdetr.util.misc import nested_tensor_from_tensor_list

DATA = os.path.join(os.path.dirname(__file__), "data", "dacdetr", "official_padded_cases.pt")
COMMON = ["--with_box_refine", "--two_stage", "--dim_feedforward", "2048", "--dropout", "0.0", "--mixed_selection",
          "--look_forward_twice", "--device", "cpu"]
CONFIGS = {
    "small": COMMON + ["--enc_layers", "2", "--dec_layers", "2", "--num_queries_one2one", "100"],
    "ep12": COMMON + ["--num_queries_one2one", "900", "--epochs", "12", "--lr_drop", "11"],
}
TOL = 1e-10


@pytest.fixture(scope="module")
def reference():
    return torch.load(DATA, weights_only=True)


_MODELS = {}


def _model(config):
    if config not in _MODELS:
        torch.manual_seed(0)
        model = build(get_args_parser().parse_args(CONFIGS[config]))
        det_init_(model)
        _MODELS[config] = model.double()
    return _MODELS[config]


def _flatten(out, prefix=""):
    flat = {}
    for k, v in out.items():
        if torch.is_tensor(v):
            flat[prefix + k] = v
        elif isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)):
            for i, e in enumerate(v):
                if isinstance(e, dict):
                    flat.update(_flatten(e, f"{prefix}{k}.{i}."))
        elif isinstance(v, (int, float)):
            flat[prefix + k] = v
    return flat


def _run_case(case):
    model = _model(case["config"])
    images = [det_input(shape, seed) for shape, seed in case["images"]]
    samples = nested_tensor_from_tensor_list(images)
    if case["mode"] == "train":
        model.train()
        targets = [{"labels": torch.tensor(t["labels"]), "boxes": torch.tensor(t["boxes"])}
                   for t in case["targets"]]
        torch.manual_seed(case["rng_seed"])
        with torch.no_grad():
            out = model(samples, targets)
    else:
        model.eval()
        with torch.no_grad():
            out = model(samples, None)
    return samples, out


def _check(case, out, slices):
    enc = out["enc_outputs"]
    assert enc["pred_logits_cdecoder"] is enc["pred_logits"]
    assert enc["pred_boxes_cdecoder"] is enc["pred_boxes"]
    flat = _flatten(out)
    ref = case["output"]
    assert set(ref) <= set(flat)
    nq, tok = slices["decoder_queries"], case["token_index"]
    errors = {}
    for key, want in ref.items():
        got = flat[key]
        if not torch.is_tensor(want):
            assert got == want, key
            continue
        got = got[:, tok] if key.startswith("enc_outputs.") else got[:, :nq]
        assert got.shape == want.shape, key
        assert got.dtype == want.dtype, key
        errors[key] = rel_err(got, want)
    bad = {k: e for k, e in errors.items() if not e <= TOL}
    assert not bad, bad
    return errors


def test_padded_batch_has_a_real_mask(reference):
    case = reference["cases"]["small_eval_padded2"]
    samples = nested_tensor_from_tensor_list([det_input(s, seed) for s, seed in case["images"]])
    assert tuple(samples.tensors.shape) == (2, 3, 256, 320)
    assert samples.mask[0].sum().item() == 256 * 320 - 200 * 260
    assert not samples.mask[1].any()
    assert samples.tensors[0, :, 200:].abs().sum().item() == 0


@pytest.mark.parametrize("name", ["small_eval_padded2", "small_eval_odd1"])
def test_eval_matches_official(reference, name):
    case = reference["cases"][name]
    _, out = _run_case(case)
    errors = _check(case, out, reference["slices"])
    assert "pred_logits" in errors and "enc_outputs.anchors" in errors
    assert out["enc_outputs"]["anchors"].dtype == torch.float32


def test_train_forward_with_denoising_matches_official(reference):
    case = reference["cases"]["small_train_padded2"]
    _, out = _run_case(case)
    errors = _check(case, out, reference["slices"])
    assert out["dn_meta"]["pad_size"] == case["output"]["dn_meta.pad_size"] == 198
    assert "dn_meta.output_known_lbs_bboxes.pred_logits" in errors
    assert "dn_meta_cdecoder.output_known_lbs_bboxes.pred_boxes_cdecoder" in errors


@pytest.mark.slow
def test_ep12_padded_batch_matches_official(reference):
    case = reference["cases"]["ep12_eval_padded2"]
    _, out = _run_case(case)
    errors = _check(case, out, reference["slices"])
    assert len([k for k in errors if k.startswith("aux_outputs.")]) == 5 * 4
