"""Run dacdetr.main with the tiny stand-in detector of tests/test_dacdetr_engine.py (for torchrun)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

import torch  # noqa: E402

import test_dacdetr_engine as t  # noqa: E402
from dacdetr import main as dmain  # noqa: E402


def build(args):
    torch.manual_seed(0)
    return t.TinyDetector(), t.TinyCriterion(), t._postprocessors()


if __name__ == "__main__":
    dmain.build_model = build
    dmain.cli(sys.argv[1:])
