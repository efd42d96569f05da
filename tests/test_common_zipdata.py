"""common.data's zipped ImageFolder (Swin's ``<split>.zip`` + ``<split>_map.txt``), its caches, the fixed-share
sampler, and per-rank log files of common.logging with two gloo processes."""
import os
import zipfile

import pytest
import torch
from torchvision import transforms

from common import data as cdata
from common.distributed import spawn
from common.logging import close_logging, setup_logging


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("zipdata"))
    return {"folder": cdata.build_demo_imagefolder(root), "zip": cdata.build_demo_zip(root), "root": root}


def test_zip_layout_and_map_file(digits):
    z = digits["zip"]
    assert sorted(os.listdir(z)) == ["train.zip", "train_map.txt", "val.zip", "val_map.txt"]
    with open(os.path.join(z, "val_map.txt")) as f:
        first = f.readline()
    assert first == "0/00024.png\t0\n"  # '<path inside the zip>\t<class index>', ImageFolder order
    with zipfile.ZipFile(os.path.join(z, "train.zip")) as zf:
        assert len(zf.namelist()) == 1437 and zf.namelist()[0].startswith("0/")


@pytest.mark.parametrize("mode", cdata.CACHE_MODES)
def test_zip_reads_the_same_samples_as_the_folder(digits, mode):
    folder = cdata.load_imagefolder(digits["folder"], "val", transforms.ToTensor())
    zipped = cdata.load_zip_imagefolder(digits["zip"], "val", transforms.ToTensor(), cache_mode=mode)
    assert len(zipped) == len(folder) == 360
    assert len(zipped.cache) == {"no": 0, "full": 360, "part": 360}[mode]  # part of one process = everything
    for i in range(0, 360, 7):
        (a, ya), (b, yb) = folder[i], zipped[i]
        assert ya == yb and torch.equal(a, b)


def test_part_cache_holds_only_the_share(digits):
    ds = cdata.load_zip_imagefolder(digits["zip"], "val", cache_mode="part", rank=1, world_size=3)
    assert sorted(ds.cache) == list(range(1, 360, 3))  # Swin's default share: index % world == rank
    ds = cdata.load_zip_imagefolder(digits["zip"], "val", cache_mode="part", cache_indices=lambda n: range(n - 5, n))
    assert sorted(ds.cache) == list(range(355, 360))
    img, y = ds[0]  # not cached: read from the zip
    assert img.size == (32, 32) and img.mode == "RGB" and y == 0


def test_missing_or_bad_files_name_the_path_and_layout(digits, tmp_path):
    with pytest.raises(cdata.DatasetNotFoundError) as e:
        cdata.load_zip_imagefolder(str(tmp_path), "train")
    msg = str(e.value)
    assert repr(os.path.join(str(tmp_path), "train.zip")) in msg and "train_map.txt" in msg
    assert "<path inside the zip>\\t<class index>" in msg and "--demo --zip" in msg
    # the zip without its map file
    os.link(os.path.join(digits["zip"], "val.zip"), tmp_path / "val.zip")
    with pytest.raises(cdata.DatasetNotFoundError, match="val_map.txt' not found"):
        cdata.load_zip_imagefolder(str(tmp_path), "val")
    (tmp_path / "val_map.txt").write_text("0/00024.png\t0\n0/00032.png zero\n")
    with pytest.raises(cdata.DataFileError, match=r"val_map.txt, line 2: expected"):
        cdata.load_zip_imagefolder(str(tmp_path), "val")
    (tmp_path / "val_map.txt").write_text("0/99999.png\t0\n")
    with pytest.raises(cdata.DataFileError, match=r"line 1: '0/99999.png' is not in the zip file"):
        cdata.load_zip_imagefolder(str(tmp_path), "val")
    (tmp_path / "train.zip").write_bytes(b"not a zip")
    (tmp_path / "train_map.txt").write_text("a.png\t0\n")
    with pytest.raises(cdata.DataFileError, match="train.zip is not a zip file"):
        cdata.load_zip_imagefolder(str(tmp_path), "train")


def test_subset_shuffle_sampler():
    s = cdata.SubsetShuffleSampler([1, 4, 7, 10], seed=3)
    first = list(s)
    assert sorted(first) == [1, 4, 7, 10] and list(s) == first
    s.set_epoch(1)
    orders = {tuple(s)} | {tuple(first)}
    for e in range(2, 6):
        s.set_epoch(e)
        orders.add(tuple(s))
    assert len(orders) > 1 and len(s) == 4


def _log_worker(env, folder):
    log = setup_logging(folder, rank=env.rank, name="run", filename=f"log_rank{env.rank}.txt",
                        fmt="%(name)s %(levelname)s %(message)s", file_all_ranks=True)
    log(f"hello from {env.rank}")
    import logging

    logging.getLogger("lib").warning("careful")
    close_logging()


@pytest.mark.slow
def test_every_rank_writes_its_own_log_file(tmp_path, capfd):
    spawn(_log_worker, 2, (str(tmp_path),), device="cpu", timeout=120)
    for r in (0, 1):
        assert (tmp_path / f"log_rank{r}.txt").read_text() == f"run INFO hello from {r}\nlib WARNING careful\n"
    out, err = capfd.readouterr()
    assert "hello from 0" in out and "hello from 1" not in out and "careful" in err and err.count("careful") == 1
