"""common.config (safe YAML, yacs with _BASE_, --opts, dumps), the YAML recipes of dianet/run_code.py, and
common.logging.setup_logging (rank 0 prints, the others are quiet, the file copy, weight-loading reports)."""
import argparse
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import torch.nn as nn

from common.config import (CfgNode, ConfigError, dump_run_config, load_config, load_yaml_with_base, merge_opts,
                           read_yaml, update_config)
from common.logging import ALL_RANKS_ENV, close_logging, log_load_report, setup_logging
from conftest import ROOT


def _defaults():
    """A small Swin-style default config (the shape of DWNet's config.py)."""
    c = CfgNode()
    c.BASE = [""]
    c.DATA = CfgNode()
    c.DATA.BATCH_SIZE = 128
    c.DATA.DATA_PATH = ""
    c.MODEL = CfgNode()
    c.MODEL.NAME = "swin_tiny_patch4_window7_224"
    c.MODEL.DROP_PATH_RATE = 0.1
    c.MODEL.DEPTHS = [2, 2, 6, 2]
    c.TRAIN = CfgNode()
    c.TRAIN.EPOCHS = 300
    c.TRAIN.BASE_LR = 5e-4
    c.TRAIN.BETAS = (0.9, 0.999)
    c.TRAIN.USE_CHECKPOINT = False
    c.OUTPUT = ""
    c.TAG = "default"
    c.EVAL_MODE = False
    return c


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path):
    """base.yaml <- variants/mid.yaml <- variants/deep/child.yaml, each naming its parent relative to itself."""
    _write(tmp_path / "base.yaml", "MODEL:\n  NAME: base\n  DROP_PATH_RATE: 0.2\n  DEPTHS: [2, 2, 18, 2]\n"
                                   "TRAIN:\n  EPOCHS: 100\n")
    _write(tmp_path / "variants" / "mid.yaml", "_BASE_: ../base.yaml\nMODEL:\n  NAME: mid\nTRAIN:\n  BASE_LR: 1.0e-3\n")
    return _write(tmp_path / "variants" / "deep" / "child.yaml",
                  "_BASE_: [../mid.yaml]\nMODEL:\n  NAME: child\nDATA:\n  BATCH_SIZE: 64\n")


def test_base_inheritance_child_overrides_parent(tree):
    merged = load_yaml_with_base(tree)
    assert merged == {"MODEL": {"NAME": "child", "DROP_PATH_RATE": 0.2, "DEPTHS": [2, 2, 18, 2]},
                      "TRAIN": {"EPOCHS": 100, "BASE_LR": 1e-3}, "DATA": {"BATCH_SIZE": 64}}
    cfg = load_config(tree, defaults=_defaults())
    assert cfg.is_frozen()
    assert cfg.MODEL.NAME == "child" and cfg.MODEL.DROP_PATH_RATE == 0.2 and cfg.MODEL.DEPTHS == [2, 2, 18, 2]
    assert cfg.TRAIN.EPOCHS == 100 and cfg.TRAIN.BASE_LR == 1e-3 and cfg.DATA.BATCH_SIZE == 64
    assert cfg.TAG == "default" and cfg.TRAIN.BETAS == (0.9, 0.999)  # untouched defaults
    assert "_BASE_" not in cfg


def test_swin_base_key_and_cycle(tmp_path):
    # Swin-Transformer's spelling: BASE: [''] is "no parent"; the key is also one of its defaults.
    _write(tmp_path / "a.yaml", "BASE: ['']\nTRAIN:\n  EPOCHS: 7\n")
    _write(tmp_path / "b.yaml", "BASE: ['a.yaml']\nTAG: b\n")
    cfg = load_config(tmp_path / "b.yaml", defaults=_defaults(), base_key="BASE")
    assert cfg.TRAIN.EPOCHS == 7 and cfg.TAG == "b"
    _write(tmp_path / "c.yaml", "_BASE_: d.yaml\n")
    _write(tmp_path / "d.yaml", "_BASE_: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_yaml_with_base(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found: .*missing.yaml"):
        load_yaml_with_base(_write(tmp_path / "e.yaml", "_BASE_: missing.yaml\n"))


def test_opts_override_with_type_checks(tree):
    cfg = load_config(tree, defaults=_defaults(),
                      opts=["TRAIN.EPOCHS", "30", "MODEL.DEPTHS", "[2, 2, 6, 2]", "TAG", "run1", "EVAL_MODE", "True"])
    assert cfg.TRAIN.EPOCHS == 30 and isinstance(cfg.TRAIN.EPOCHS, int)
    assert cfg.MODEL.DEPTHS == [2, 2, 6, 2] and cfg.TAG == "run1" and cfg.EVAL_MODE is True
    with pytest.raises(ConfigError) as e:
        load_config(tree, defaults=_defaults(), opts=["TRAIN.EPOCHS", "abc"])
    assert str(e.value) == "--opts: TRAIN.EPOCHS takes a value of type int (it is 100), got 'abc'"
    with pytest.raises(ConfigError, match="unknown config key 'TRAIN.EPOCH'"):
        merge_opts(_defaults(), ["TRAIN.EPOCH", "3"])
    with pytest.raises(ConfigError, match="KEY VALUE pairs; 'TAG' has no value"):
        merge_opts(_defaults(), ["TAG"])
    # a file with a wrong type or an unknown key: the message names the file and the key
    bad = _write(tree.parent / "bad.yaml", "DATA:\n  BATCH_SIZE: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: Type mismatch .* DATA.BATCH_SIZE"):
        load_config(bad, defaults=_defaults())
    with pytest.raises(ConfigError, match=r"typo.yaml: .*Non-existent config key: MODEL.NAMEE"):
        load_config(_write(tree.parent / "typo.yaml", "MODEL:\n  NAMEE: x\n"), defaults=_defaults())


def test_update_config_maps_the_swin_flags(tree):
    args = argparse.Namespace(cfg=str(tree), opts=["TRAIN.EPOCHS", "5"], batch_size=32, data_path="/data/imagenet",
                              resume="", use_checkpoint=True, output="out", tag=None, eval=False, throughput=False)
    cfg = update_config(_defaults(), args)
    assert cfg.is_frozen() and cfg.MODEL.NAME == "child" and cfg.TRAIN.EPOCHS == 5
    assert cfg.DATA.BATCH_SIZE == 32 and cfg.DATA.DATA_PATH == "/data/imagenet" and cfg.TRAIN.USE_CHECKPOINT
    assert cfg.OUTPUT == "out" and cfg.TAG == "default" and cfg.EVAL_MODE is False  # falsy flags leave keys alone


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "marker"
    evil = _write(tmp_path / "evil.yaml", f"TAG: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="evil.yaml: refused, it is not plain YAML"):
        read_yaml(evil)
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(evil, defaults=_defaults())
    child = _write(tmp_path / "child.yaml", "_BASE_: evil.yaml\nTAG: x\n")  # also through a parent
    with pytest.raises(ConfigError, match="evil.yaml"):
        load_config(child, defaults=_defaults())
    # yacs itself would import a .py config; ours refuses it
    py = _write(tmp_path / "evil.py", f"open({str(marker)!r}, 'w').close()\ncfg = dict(TAG='x')\n")
    with pytest.raises(ConfigError, match=r"evil.py: a config must be a .yaml / .yml file"):
        load_config(py, defaults=_defaults())
    assert not marker.exists()
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        read_yaml(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_project_reads_yaml_only_safely():
    # yaml.load / unsafe loaders, and yacs's own file loading (which imports .py configs), appear nowhere
    unsafe = re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\(|(Unsafe|Full)Loader|\.merge_from_file\(|"
                        r"\.load_cfg\(")
    offenders = [str(path) for folder in ("common", "dianet", "dacdetr", "slurm", "tools", "benchmarks")
                 for path in Path(ROOT, folder).rglob("*.py") if unsafe.search(path.read_text())]
    assert offenders == []


def test_dump_round_trip(tree, tmp_path):
    cfg = load_config(tree, defaults=_defaults(), opts=["TRAIN.BETAS", "(0.5, 0.9)"])
    path = dump_run_config(tmp_path / "run", cfg)
    assert path == str(tmp_path / "run" / "config.yaml")
    again = load_config(path, defaults=_defaults())
    assert again == cfg and again.TRAIN.BETAS == (0.5, 0.9)
    assert sorted(os.listdir(tmp_path / "run")) == ["config.yaml"]  # no temporary file left behind

    args = argparse.Namespace(arch="dia_resnet", schedule=[60, 120], lr=0.1, resume="", out=Path("a/b"),
                              size=(3, 4), seed=None, demo=True)
    dump_run_config(tmp_path / "run", args, filename="args.yaml")
    assert read_yaml(tmp_path / "run" / "args.yaml") == {"arch": "dia_resnet", "schedule": [60, 120], "lr": 0.1,
                                                          "resume": "", "out": "a/b", "size": [3, 4], "seed": None,
                                                          "demo": True}
    assert list(read_yaml(tmp_path / "run" / "args.yaml")) == list(vars(args))  # flag order kept


# The command lines of the four recipes as the hard-coded table of dianet/run_code.py gave them.
OLD_RECIPES = {
    "resnet164": ["-a", "dia_resnet", "--train-batch", "128", "--dataset", "cifar100", "--depth", "164",
                  "--block-name", "bottleneck", "--epochs", "180", "--schedule", "60", "120", "--gamma", "0.1",
                  "--wd", "1e-4", "--checkpoint", "checkpoints/cifar100/resnet-164-dia-rate4"],
    "preresnet164": ["-a", "dia_preresnet", "--train-batch", "128", "--dataset", "cifar100", "--depth", "164",
                     "--block-name", "bottleneck", "--epochs", "164", "--schedule", "81", "122", "--gamma", "0.1",
                     "--wd", "1e-4", "--checkpoint", "checkpoints/cifar100/preresnet-164-dia-rate4"],
    "wrn52_4": ["-a", "dia_wrn", "--dataset", "cifar100", "--lr", "0.1", "--depth", "52", "--widen-factor", "4",
                "--drop", "0.3", "--epochs", "200", "--schedule", "80", "120", "160", "--wd", "5e-4", "--gamma",
                "0.2", "--checkpoint", "checkpoints/cifar100/WRN-52-4-drop-dia-rate4"],
    "resnext101": ["-a", "dia_resnext", "--dataset", "cifar100", "--depth", "101", "--cardinality", "8",
                   "--widen-factor", "4", "--checkpoint", "checkpoints/cifar100/resnext-8x32d-101-dia-rate4",
                   "--schedule", "150", "225", "--wd", "5e-4", "--gamma", "0.1"],
}


def test_run_code_recipes_from_yaml_match_the_old_table(tmp_path):
    from dianet import run_code

    assert list(run_code.recipes()) == list(OLD_RECIPES)
    from dianet.cifar import get_parser

    # the recipes name their model by variant (dianet's table); the flags they give cifar.py parse to exactly
    # the arguments of the old command lines
    cifar = os.path.join(ROOT, "dianet", "cifar.py")
    for name, argv in OLD_RECIPES.items():
        (cmd,) = run_code.commands(name)
        assert cmd[:2] == [sys.executable, cifar]
        assert vars(get_parser().parse_args(cmd[2:])) == vars(get_parser().parse_args(argv))
    assert [c[-1] for c in run_code.commands("all", ["--demo"])] == ["--demo"] * 4
    with pytest.raises(ConfigError, match="bad.yaml: variant: .*no_such_net"):
        run_code.commands(str(_write(tmp_path / "bad.yaml", "variant: no_such_net\nflags:\n  --epochs: 3\n")))
    mine = _write(tmp_path / "mine.yaml", "flags:\n  -a: dia_resnet\n  --schedule: [1, 2]\n  --demo: true\n"
                                          "  --resume: null\n")
    assert run_code.commands(str(mine))[0][2:] == ["-a", "dia_resnet", "--schedule", "1", "2", "--demo"]
    with pytest.raises(ConfigError, match="mine2.yaml: 'epochs' is not a flag"):
        run_code.commands(str(_write(tmp_path / "mine2.yaml", "flags:\n  epochs: 3\n")))
    with pytest.raises(ConfigError, match="unknown recipe 'resnet20'; choose one of: resnet164, preresnet164"):
        run_code.commands("resnet20")


@pytest.fixture
def clean_logging():
    yield
    close_logging()


def test_setup_logging_rank0_prints_rank1_is_quiet(capsys, tmp_path, monkeypatch, clean_logging):
    monkeypatch.delenv(ALL_RANKS_ENV, raising=False)
    lib = logging.getLogger("dacdetr.models.backbone")

    log = setup_logging(output_dir=tmp_path / "out", rank=1)
    log("hello", 3)
    lib.info("loaded weights")
    lib.warning("weights missing")
    assert capsys.readouterr() == ("", "") and not log.enabled
    assert not (tmp_path / "out").exists()  # no file on the quiet ranks

    log = setup_logging(output_dir=tmp_path / "out", rank=0)
    log = setup_logging(output_dir=tmp_path / "out", rank=0)  # a second set-up replaces the first
    log("\nEpoch: [%d | %d] LR: %f" % (1, 2, 0.1))
    log("a", 1, 2.5, sep="-", end="")
    log("|")
    log(0.75)
    lib.info("loaded weights")
    lib.warning("weights missing")
    out, err = capsys.readouterr()
    expected = "\nEpoch: [1 | 2] LR: 0.100000\na-1-2.5|\n0.75\nloaded weights\n"
    assert out == expected and err == "warning: weights missing\n"
    assert (tmp_path / "out" / "console.log").read_text() == expected + "warning: weights missing\n"

    monkeypatch.setenv(ALL_RANKS_ENV, "1")
    log = setup_logging(rank=1)
    log("hello")
    assert capsys.readouterr().out == "[rank 1] hello\n"


def test_weight_loading_report_reaches_rank0(capsys, clean_logging):
    src = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3))
    dst = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3), nn.Linear(3, 1))
    state = {**src.state_dict(), "fc.total_ops": src[0].weight.new_zeros(())}
    result = dst.load_state_dict(state, strict=False)
    setup_logging(rank=0)
    missing, unexpected = log_load_report(result, "w.pth", "the backbone", ignore=("total_ops",))
    assert missing == ["3.weight", "3.bias"] and unexpected == []
    assert capsys.readouterr().out == "loaded w.pth into the backbone; missing keys (2): 3.weight, 3.bias\n"
    setup_logging(rank=2)
    log_load_report(result, "w.pth")
    assert capsys.readouterr().out == ""


def test_loose_config_without_defaults(tree):
    cfg = load_config(tree, opts=["TRAIN.EPOCHS", "3"])  # no defaults: the file's own keys, still type-checked
    assert cfg.MODEL.NAME == "child" and cfg.TRAIN.EPOCHS == 3 and cfg.TRAIN.BASE_LR == 1e-3
    with pytest.raises(ConfigError, match="TRAIN.EPOCHS takes a value of type int"):
        load_config(tree, opts=["TRAIN.EPOCHS", "three"])
