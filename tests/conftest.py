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


SLURM_TEST_FILES = "tests/test_slurm_"


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``pytest -n N`` (``--dist load``, the default): every test of ``tests/test_slurm_*.py`` goes to
    one worker, so that the SLURM tests share one test cluster and their session-scoped jobs run once;
    all other tests are spread one by one as with ``load``. (The ``xdist_group`` mark does not do this
    with pytest 9, whose node ids cannot be renamed by pytest-xdist 3.8.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SlurmTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "slurm" if nodeid.startswith(SLURM_TEST_FILES) else nodeid

    return SlurmTestsTogether(config, log)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A private two-node SLURM cluster (nodes ``n1``, ``n2`` on 127.0.0.1, 4 CPUs each) shared by every
    SLURM test of this test process, stopped at the end (its watchdog stops it if the process dies).
    Under xdist all ``tests/test_slurm_*.py`` tests run in one worker (``pytest_xdist_make_scheduler``
    above), so one cluster serves them."""
    import shutil

    from slurm.testing.cluster import LocalSlurmCluster, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.skip("SLURM test cluster needs " + ", ".join(missing) + " (apt-get install -y slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster must be started as root")
    cluster = LocalSlurmCluster(nodes=2, cpus=4)
    cluster.start()
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    cluster.activate()
    try:
        yield cluster
    finally:
        cluster.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sets(tmp_path_factory):
    """Small data sets in each layout the training scripts read, cut from the digits demo sets (for runs
    through the SLURM launcher that must be quick): CIFAR-10 pickles (512 train / 100 test images, with
    their SHA256SUMS), an ImageNet-layout ImageFolder (8 train / 2 val images per digit) and a COCO
    detection set (4 train / 2 val). Returns ``{"cifar": root, "imagefolder": root, "coco": root}``."""
    import pickle
    import shutil
    from pathlib import Path

    import numpy as np

    from common.data import build_demo_cifar, build_demo_imagefolder, read_cifar_pickle, write_checksums
    from dacdetr.datasets.demo import build_demo_coco

    root = tmp_path_factory.mktemp("tiny_sets")
    demo = Path(build_demo_cifar(str(root / "full"))) / "cifar-10-batches-py"
    cifar = root / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    parts = [read_cifar_pickle(str(demo / f"data_batch_{i}")) for i in (1, 2)]
    train = {"batch_label": "training batch 1 of 1", "labels": [int(v) for p in parts for v in p["labels"]][:512],
             "data": np.ascontiguousarray(np.concatenate([np.asarray(p["data"]) for p in parts])[:512])}
    test = read_cifar_pickle(str(demo / "test_batch"))
    test = {"batch_label": test["batch_label"], "labels": [int(v) for v in test["labels"][:100]],
            "data": np.ascontiguousarray(np.asarray(test["data"])[:100])}
    for name, batch in (("data_batch_1", train), ("test_batch", test)):
        with open(cifar / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    shutil.copy(demo / "batches.meta", cifar / "batches.meta")
    write_checksums(str(cifar), ["data_batch_1", "test_batch", "batches.meta"])
    full = Path(build_demo_imagefolder(str(root / "full")))
    imagefolder = root / "imagenet"
    for split, n in (("train", 8), ("val", 2)):
        for cls in sorted(p for p in (full / split).iterdir() if p.is_dir()):
            (imagefolder / split / cls.name).mkdir(parents=True)
            for img in sorted(cls.iterdir())[:n]:
                shutil.copy(img, imagefolder / split / cls.name / img.name)
    build_demo_coco(root / "coco", n_train=4, n_val=2, seed=1)
    shutil.rmtree(root / "full")
    return {"cifar": str(root / "cifar"), "imagefolder": str(imagefolder), "coco": str(root / "coco")}
