import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The digits demo set in CIFAR-10 pickle format, built once per test process."""
    from common.data import build_demo_cifar

    root = tmp_path_factory.mktemp("datasets")
    return build_demo_cifar(str(root))


def run_script(args, env=None, timeout=600, check=False, cwd=ROOT):
    """Run a project script in a subprocess (one thread, like CI) and return the CompletedProcess."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.run([sys.executable] + list(args), cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc
