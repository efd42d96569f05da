"""common.train.imagenet (the pytorch/examples ImageNet skeleton) and the official curve logs of common.plots:
the progress line against hand-computed values, the curve logs on resume, the scheduler position, the readers."""
import copy
import os
import re

import pytest
import torch
import torch.nn as nn

from common import distributed as D
from common import engine, plots
from common.train import imagenet as skel


def test_progress_line_is_the_official_format_with_hand_values():
    torch.manual_seed(0)
    model = nn.Linear(6, 7)
    first = copy.deepcopy(model)
    batches = [(torch.randn(4, 6), torch.randint(0, 7, (4,))) for _ in range(3)]
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    lines = []
    env = D.DistEnv()
    engine.train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, env, engine.AmpConfig(None), epoch=3,
                           print_freq=2, log=lines.append,
                           progress=lambda i, n, m: skel.progress_line(3, i, n, opt.param_groups[0]["lr"], m))
    assert len(lines) == 2 and lines[0].startswith("Epoch: [3][0/3]\t") and lines[1].startswith("Epoch: [3][2/3]\t")
    pat = (r"Epoch: \[3\]\[0/3\]\tLR 0\.25000\tTime \d+\.\d{3} \(\d+\.\d{3}\)\tData \d+\.\d{3} \(\d+\.\d{3}\)\t"
           r"Loss (\S+) \((\S+)\)\tAcc@1 (\S+) \((\S+)\)\tAcc@5 (\S+) \((\S+)\)$")
    m = re.match(pat, lines[0])
    assert m, lines[0]
    x, y = batches[0]
    with torch.no_grad():  # batch 0 was computed with the initial weights
        out = first(x).double()
    loss = float(-torch.log_softmax(out, 1)[range(4), y].mean())
    rank = (out > out[range(4), y][:, None]).sum(1)  # classes scored above the target
    top1, top5 = 100 * float((rank < 1).double().mean()), 100 * float((rank < 5).double().mean())
    vals = [float(v) for v in m.groups()]
    assert vals == pytest.approx([loss, loss, top1, top1, top5, top5], abs=6e-4)


def test_curve_logs_are_plain_and_continue_on_resume(tmp_path):
    files = (("a.txt", "x"), ("b.txt", "y"))
    logs = skel.CurveLogs(str(tmp_path), files)
    for e in range(3):
        logs.append(e, {"x": e + 0.5, "y": torch.tensor(e * 10.0)})
    assert (tmp_path / "a.txt").read_text() == "0 0.5\n1 1.5\n2 2.5\n"
    assert (tmp_path / "b.txt").read_text() == "0 0.0\n1 10.0\n2 20.0\n"  # a tensor is written as its number
    skel.CurveLogs(str(tmp_path), files, start_epoch=2).append(2, {"x": 9.0, "y": 8.0})  # resumed at epoch 2
    assert plots.read_official_curve(str(tmp_path / "a.txt")) == [(0, 0.5), (1, 1.5), (2, 9.0)]
    skel.CurveLogs(str(tmp_path), files, enabled=False).append(3, {"x": 1.0, "y": 1.0})  # rank != 0: nothing
    assert len((tmp_path / "b.txt").read_text().splitlines()) == 3


def test_summary_line_and_run_dir():
    res = {"top1": 76.12345, "top5": 93.0, "loss": 1.234567}
    assert skel.summary_line(res) == " * Acc@1 76.123 Acc@5 93.000"
    assert skel.summary_line(res, with_loss=True) == " * Acc@1 76.123 Acc@5 93.000 Loss 1.2346"


@pytest.mark.parametrize("text, value", [("12.5", 12.5), ("tensor(61.234, device='cuda:0')", 61.234),
                                         ("tensor(7.)", 7.0), (" 3 ", 3.0)])
def test_official_values_parse(text, value):
    assert plots.parse_official_value(text) == value


def test_examples_records_and_plots(tmp_path):
    (tmp_path / "val_acc1.txt").write_text("0 tensor(10.0, device='cuda:0')\n1 tensor(20.5, device='cuda:0')\n")
    (tmp_path / "train_acc1.txt").write_text("0 5.0\n1 15.0\n")
    (tmp_path / "valloss_plot.txt").write_text("0 2.0\n1 1.5\n")
    (tmp_path / "lr_plot.txt").write_text("0 0.05\n1 0.1\n")
    records = plots.read_examples_records(str(tmp_path))
    assert records == [{"epoch": 0, "train_top1": 5.0, "test_top1": 10.0, "test_loss": 2.0, "lr_end": 0.05},
                       {"epoch": 1, "train_top1": 15.0, "test_top1": 20.5, "test_loss": 1.5, "lr_end": 0.1}]
    figs = plots.plot_examples_curves(str(tmp_path), out_dir=str(tmp_path / "png"))
    assert sorted(os.path.basename(p) for p in figs) == ["acc1_plot.png", "loss_plot.png", "lr_plot.png"]
    (line,) = figs[str(tmp_path / "png" / "loss_plot.png")].axes[0].lines
    assert line.get_label() == "validation" and list(line.get_ydata()) == [2.0, 1.5]
    (lr,) = figs[str(tmp_path / "png" / "lr_plot.png")].axes[0].lines
    assert list(lr.get_ydata()) == [0.05, 0.1]
    assert plots.best_of([(0, 1.0), (1, 3.0), (2, 3.0)]) == (3.0, 1)


def test_validation_lines_are_the_official_format():
    torch.manual_seed(1)
    model = nn.Linear(6, 7)
    batches = [(torch.randn(5, 6), torch.randint(0, 7, (5,))) for _ in range(3)]
    lines = []
    res = engine.evaluate(model, batches, nn.CrossEntropyLoss(), D.DistEnv(), engine.AmpConfig(None),
                          progress=skel.test_line, print_freq=2, log=lines.append)
    assert [ln.split("\t")[0] for ln in lines] == ["Test: [0/3]", "Test: [2/3]"]
    with torch.no_grad():
        out = torch.cat([model(x) for x, _ in batches]).double()
    y = torch.cat([t for _, t in batches])
    loss = float(-torch.log_softmax(out, 1)[range(15), y].mean())
    m = re.match(r"Test: \[2/3\]\tTime \S+ \(\S+\)\tLoss \S+ \((\S+)\)\tAcc@1 \S+ \((\S+)\)\tAcc@5 \S+ \(\S+\)$",
                 lines[1])
    top1 = 100 * float((out.argmax(1) == y).double().mean())
    assert float(m.group(1)) == pytest.approx(loss, abs=6e-5) and float(m.group(2)) == pytest.approx(top1, abs=6e-4)
    assert res["loss"] == pytest.approx(loss, rel=1e-6) and res["top1"] == pytest.approx(top1)
