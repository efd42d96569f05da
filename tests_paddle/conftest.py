"""Tests of the PaddlePaddle port (dacdetr.paddle). They run in .venv-paddle (tools/paddle_env.sh), where
both paddle and torch import, so the Paddle model is compared with the PyTorch one in one process."""
import os
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # paddle's import-time notice about a missing ccache
    paddle = pytest.importorskip("paddle", reason="PaddlePaddle is not installed (bash tools/paddle_env.sh)")

paddle.set_device("cpu")
