"""The paper's numbers from our own counters, and the timm registration."""
import pytest
import torch

import dianet
from common.flops import count_flops, count_params

# params and fvcore MACs at 32x32 of the paper's variants, as the official code gives them; the variants
# themselves (constructor and kwargs) come from dianet's table, so a wrong entry there fails here.
PAPER = {
    "dia_resnet164": (1_946_132, 260.1e6),
    "dia_preresnet164": (1_961_364, 264.0e6),
    "dia_wrn52_4": (12_298_516, 1759.8e6),
    "dia_resnext101_8x32": (33_006_020, 4808.8e6),
}


def test_the_paper_variants_are_the_table_s():
    assert sorted(v.name for v in dianet.variants(paper=True)) == sorted(PAPER)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_flops_match_the_official_counts(name):
    params, macs = PAPER[name]
    model = dianet.create_model(name)
    assert dianet.get_variant(name).num_classes == 100
    assert count_params(model) == params
    assert abs(count_flops(model, torch.zeros(1, 3, 32, 32)) - macs) < 0.05e6


def test_timm_registration():
    import timm

    assert sorted(timm.list_models("dia_*")) == sorted(PAPER)
    model = timm.create_model("dia_wrn52_4")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 100 and cfg["classifier"] == "fc"
    assert cfg["mean"] == (0.4914, 0.4822, 0.4465)
    assert count_params(model) == 12_298_516
    small = timm.create_model("dia_resnext101_8x32", num_classes=10)
    assert small.classifier.out_features == 10
    with pytest.raises(RuntimeError, match="no weights are downloaded"):
        timm.create_model("dia_resnet164", pretrained=True)
    # never shadows a name timm already owns
    from common.timm_compat import register_timm

    assert register_timm("resnet50", lambda **kw: None, {}) is False
    assert type(timm.create_model("resnet50")).__module__.startswith("timm.")
