"""Without OpenMMLab installed, the mmdet / mmseg plugins stop with one message that says what to install (the
plugins themselves are tested in tests_mm/, in the OpenMMLab environment)."""
import importlib
import importlib.util
import sys

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mmengine") is not None,
                                reason="OpenMMLab is installed here: the plugins are tested in tests_mm/")


@pytest.mark.parametrize("plugin", ["dla.mmdet", "rlanet.mmdet", "dwnet.mmdet", "dwnet.mmseg"])
def test_plugin_without_openmmlab_names_the_install(plugin):
    from common.openmmlab import MissingOpenMMLabError

    sys.modules.pop(plugin, None)
    with pytest.raises(MissingOpenMMLabError, match=r"needs mmengine .*pip install -e '\.\[mmdet\]'"):
        importlib.import_module(plugin)
    assert plugin not in sys.modules


def test_copy_in_files_and_configs_are_plain_python():
    """The copy-in files and the configs compile (they are read by OpenMMLab, not imported by layerzoo)."""
    import glob
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = [f for pattern in ("*/mmdet_copy/*.py", "*/mmseg_copy/*.py", "*/configs/mm*/**/*.py")
             for f in glob.glob(os.path.join(root, pattern), recursive=True)]
    assert len(files) >= 4 + 4 + 28
    for f in files:
        with open(f) as fh:
            compile(fh.read(), f, "exec")
