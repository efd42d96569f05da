"""The OpenMMLab tests (mmdetection 3.x / mmsegmentation 1.x plugins and configs). They run in the OpenMMLab
environment (``bash tools/mm_env.sh`` makes ``.venv-mm``; ``tools/run_tests.sh`` runs them after the main suite),
not in the main one: ``pytest tests`` never collects this folder.

With mmcv-lite (mmcv without its compiled ops) the test-only stand-in ``_mmcv_ext_standin`` replaces
``mmcv._ext`` (nms and roi_align through torchvision); with the full mmcv installed the real ops run."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

pytest.importorskip("mmdet", reason="the OpenMMLab tests need mmdet: bash tools/mm_env.sh, then run them "
                                    "with .venv-mm/bin/python")

import _mmcv_ext_standin  # noqa: E402

USING_STANDIN = _mmcv_ext_standin.install()

import mmdet.models  # noqa: E402,F401  (mmdet's modules in its registries)
import mmseg.models  # noqa: E402,F401
from mmdet.utils import register_all_modules as _register_mmdet  # noqa: E402

_register_mmdet(init_default_scope=False)


def pytest_report_header(config):
    return ("mmcv._ext: test-only stand-in (nms, roi_align via torchvision)" if USING_STANDIN
            else "mmcv._ext: compiled mmcv ops")


@pytest.fixture(scope="session")
def demo_coco(tmp_path_factory):
    """A small digits COCO set (16 train / 8 val images) in the standard COCO layout."""
    from common.demo_coco import build_demo_coco

    root = tmp_path_factory.mktemp("coco_demo")
    build_demo_coco(root, n_train=16, n_val=8, seed=0)
    return root
