"""Weight conversion between the PyTorch DAC-DETR and the Paddle port: explicit rules, exact round trip,
every key used."""
import numpy as np
import paddle
import pytest
import torch

from conftest import OFFICIAL_FLAGS, build_pair, parse
from dacdetr.paddle.convert import load_into, paddle_to_torch, rule_for, torch_to_paddle


@pytest.mark.parametrize("name,rule", [
    ("transformer.encoder.layers.0.self_attn.sampling_offsets.weight", "transpose"),
    ("transformer.decoder.layers.3.self_attn.in_proj_weight", "transpose"),
    ("transformer.decoder.layers.3.self_attn.out_proj.weight", "transpose"),
    ("transformer.decoder.layers.3.linear2.weight", "transpose"),
    ("transformer.pos_trans.weight", "transpose"),
    ("class_embed.6.weight", "transpose"),
    ("transformer.decoder.bbox_embed.2.layers.1.weight", "transpose"),
    ("query_embed.weight", "keep"),             # nn.Embedding: same layout in both frameworks
    ("label_enc.weight", "keep"),
    ("input_proj.3.0.weight", "keep"),          # conv
    ("input_proj.0.1.weight", "keep"),          # GroupNorm
    ("transformer.enc_output_norm.weight", "keep"),
    ("backbone.0.body.layer1.0.downsample.0.weight", "keep"),
    ("backbone.0.body.bn1.running_mean", "rename"),
    ("backbone.0.body.layer2.0.downsample.1.running_var", "rename"),
    ("backbone.0.body.layer2.0.bn1.num_batches_tracked", "drop"),
    ("backbone.0.body.fc.weight", "unknown"),
])
def test_rules_are_by_name(name, rule):
    assert rule_for(name) == rule


def test_round_trip_exact_and_every_key_used(small_pair):
    tm, _, _, pm, _, _ = small_pair
    sd = tm.state_dict()
    conv = torch_to_paddle(sd)
    assert conv.report["unused"] == [] and conv.report["dropped"] == []
    # the model loads it with every key used (and nothing missing)
    missing, unexpected, shapes = load_into(pm, conv)
    assert (missing, unexpected, shapes) == ([], [], [])
    assert set(conv) == set(pm.state_dict())
    # Linear weights transposed, embeddings and convs not, BN statistics renamed
    k = "transformer.decoder.layers.0.self_attn.in_proj_weight"
    assert np.array_equal(conv[k].numpy(), sd[k].numpy().T)
    assert np.array_equal(conv["label_enc.weight"].numpy(), sd["label_enc.weight"].numpy())
    assert np.array_equal(conv["input_proj.0.0.weight"].numpy(), sd["input_proj.0.0.weight"].numpy())
    assert np.array_equal(conv["backbone.0.body.bn1._variance"].numpy(), sd["backbone.0.body.bn1.running_var"].numpy())
    # exact round trip through the Paddle model's own state dict
    back = paddle_to_torch(pm.state_dict())
    assert back.report["unused"] == []
    assert list(back) == list(sd)  # same keys, same order
    for name, value in sd.items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name


def test_leftovers_are_reported():
    sd = {"query_embed.weight": torch.ones(3, 4), "module_total_params": torch.ones(1),
          "backbone.0.body.bn1.num_batches_tracked": torch.tensor(3), "something.else": torch.ones(2, 2)}
    conv = torch_to_paddle(sd)
    assert list(conv) == ["query_embed.weight"]
    assert conv.report["unused"] == ["something.else"]
    assert set(conv.report["dropped"]) == {"module_total_params", "backbone.0.body.bn1.num_batches_tracked"}
    assert "something.else" in conv.summary()
    ddp = torch_to_paddle({"module." + k: v for k, v in sd.items()})
    assert list(ddp) == ["query_embed.weight"]


def test_strict_load_names_the_keys(small_pair):
    _, _, _, pm, _, _ = small_pair
    state = dict(pm.state_dict())
    state.pop("query_embed.weight")
    with pytest.raises(ValueError, match="query_embed.weight"):
        load_into(pm, state)


def test_official_config_state_dict_converts_and_loads():
    """The 632-key official R50 state dict (aliased heads included) converts and fills the Paddle model."""
    from dacdetr.models.deformable_detr import build as torch_build
    from dacdetr.paddle.detr import build as paddle_build

    args = parse(OFFICIAL_FLAGS)
    sd = torch_build(args).state_dict()
    assert len(sd) == 632
    conv = torch_to_paddle(sd)
    pm = paddle_build(args)
    assert load_into(pm, conv) == ([], [], [])
    n_params = sum(int(np.prod(p.shape)) for p in pm.parameters())
    n_trainable = sum(int(np.prod(p.shape)) for p in pm.parameters() if not p.stop_gradient)
    assert n_trainable == 47_516_825
    # frozen BN statistics are buffers, not parameters: parameters = all minus BN buffers
    assert n_params == n_trainable + 222_400
