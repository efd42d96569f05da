"""Dataset files are read without running code from them, and their integrity is checked."""
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from common import data as cdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _files(folder):
    return [p.name for p in folder.iterdir() if p.is_file() and p.name != cdata.CHECKSUMS_NAME]


def _cifar10_folder(tmp_path, n=6, seed=0, manifest=True):
    root = tmp_path / "c10"
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    for name in ("data_batch_1", "test_batch"):
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"{i}.png" for i in range(n)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_vis": 3072}, f, protocol=2)
    if manifest:
        cdata.write_checksums(str(folder), _files(folder))
    return root, folder, data, labels


def test_reads_the_format_python2_style_and_python3(tmp_path):
    root, folder, data, labels = _cifar10_folder(tmp_path)
    ds = cdata.load_cifar(str(root), "cifar10", train=True)
    assert ds.targets == labels and ds.classes == [f"c{i}" for i in range(10)]
    # rows are R plane, G plane, B plane of 32x32: pixel (y, x) of image i has channels data[i, c*1024 + y*32 + x]
    i, y, x = 3, 7, 11
    assert [int(v) for v in ds.data[i, y, x]] == [int(data[i, c * 1024 + y * 32 + x]) for c in range(3)]
    img, t = ds[i]
    assert t == labels[i] and np.asarray(img)[y, x].tolist() == ds.data[i, y, x].tolist()
    # the official archives are Python 2 pickles (protocol 2, str data decoded as latin1); a byte string
    # protocol 0 pickle with numpy arrays is read too
    batch = {"labels": labels, "data": data}
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=0)
    cdata.write_checksums(str(folder), _files(folder))
    assert np.array_equal(cdata.load_cifar(str(root), "cifar10", train=True).data, ds.data)
    # bytes keys (pickle.dump of a Python 3 dict written with encoding='bytes' readers in mind) are not the
    # format; the reader names the file
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"labels": labels, b"data": data}, f, protocol=2)
    cdata.write_checksums(str(folder), _files(folder))
    with pytest.raises(cdata.DataFileError, match="data_batch_1.*not a CIFAR batch"):
        cdata.load_cifar(str(root), "cifar10", train=True)


@pytest.mark.parametrize("protocol", [2, 4])
def test_crafted_batch_is_refused_and_does_not_run(tmp_path, protocol):
    root, folder, data, labels = _cifar10_folder(tmp_path)
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"labels": labels, "data": data, "x": _Payload(marker)}, f, protocol=protocol)
    cdata.write_checksums(str(folder), _files(folder))  # even a folder whose checksums were recorded after the change
    with pytest.raises(cdata.DataFileError) as err:
        cdata.load_cifar(str(root), "cifar10", train=True)
    msg = str(err.value)
    assert str(folder / "data_batch_1") in msg and ("posix.system" in msg or "os.system" in msg)
    assert not marker.exists()


def test_object_arrays_and_other_subtypes_are_refused(tmp_path):
    root, folder, data, labels = _cifar10_folder(tmp_path)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"labels": labels, "data": np.array([object()] * 3, dtype=object)}, f, protocol=2)
    with pytest.raises(cdata.DataFileError, match="data_batch_1"):
        cdata.read_cifar_pickle(str(folder / "data_batch_1"))
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({"data": np.ma.masked_array([1, 2])}, f, protocol=2)
    with pytest.raises(cdata.DataFileError, match="refused type numpy.ma"):
        cdata.read_cifar_pickle(str(folder / "data_batch_1"))


def test_garbled_and_truncated_files_are_named(tmp_path):
    root, folder, data, labels = _cifar10_folder(tmp_path, manifest=False)
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(cdata.DataFileError, match="data_batch_1: corrupt or truncated"):
        cdata.read_cifar_pickle(str(folder / "data_batch_1"))
    (folder / "data_batch_1").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(cdata.DataFileError, match="data_batch_1"):
        cdata.read_cifar_pickle(str(folder / "data_batch_1"))


def test_official_names_are_checked_against_the_official_md5(tmp_path, monkeypatch):
    root, folder, data, labels = _cifar10_folder(tmp_path, manifest=False)
    with pytest.raises(cdata.DataFileError) as err:
        cdata.load_cifar(str(root), "cifar10", train=True)
    msg = str(err.value)
    assert "data_batch_1" in msg and "c99cafc152244af753f735de768cd75f" in msg  # torchvision's official sum
    assert "batches.meta" in msg and "test_batch" not in msg and "checksums" in msg
    # a folder whose files are the official ones passes: pretend these are by patching the table
    real = cdata._official_md5s
    sums = {n: cdata._digest(str(folder / n), "md5") for n in ("data_batch_1", "batches.meta", "test_batch")}
    monkeypatch.setattr(cdata, "_official_md5s", lambda ds: dict(real(ds), **sums))
    assert len(cdata.load_cifar(str(root), "cifar10", train=True)) == len(labels)
    raw = bytearray((folder / "test_batch").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one pixel of one image
    (folder / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(cdata.DataFileError, match="test_batch"):
        cdata.load_cifar(str(root), "cifar10", train=False)


def test_demo_records_checksums_and_reports_a_changed_file(tmp_path):
    root = cdata.build_demo_cifar(str(tmp_path))
    folder = os.path.join(root, "cifar-10-batches-py")
    sums = cdata.read_checksums(folder)
    assert sorted(sums) == ["batches.meta"] + [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert len(cdata.load_cifar(root, "cifar10", train=True)) == 1437
    path = os.path.join(folder, "data_batch_3")
    with open(path, "r+b") as f:  # flip one pixel byte near the end
        f.seek(-200, os.SEEK_END)
        b = f.read(1)
        f.seek(-200, os.SEEK_END)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(cdata.DataFileError) as err:
        cdata.load_cifar(root, "cifar10", train=True)
    assert path in str(err.value) and "data_batch_1" not in str(err.value)
    assert len(cdata.load_cifar(root, "cifar10", train=False)) == 360  # the untouched split still loads
    # a demo folder without checksums (older version) is rebuilt, identical
    before = open(os.path.join(folder, "test_batch"), "rb").read()
    shutil.rmtree(folder)
    cdata.build_demo_cifar(str(tmp_path))
    os.remove(os.path.join(folder, cdata.CHECKSUMS_NAME))
    cdata.build_demo_cifar(str(tmp_path))
    assert open(os.path.join(folder, "test_batch"), "rb").read() == before
    assert cdata.read_checksums(folder) == sums


def test_checksums_command(tmp_path):
    root, folder, data, labels = _cifar10_folder(tmp_path, manifest=False)
    run = lambda *a: subprocess.run([sys.executable, "-m", "common.data", *a], cwd=ROOT, capture_output=True,
                                    text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    r = run("checksums", str(folder))
    assert r.returncode == 0, r.stderr
    assert len(cdata.load_cifar(str(root), "cifar10", train=True)) == len(labels)  # custom set now accepted
    (folder / "batches.meta").write_bytes(b"x")
    r = run("verify", str(folder))
    assert r.returncode == 2 and "batches.meta" in r.stderr and "Traceback" not in r.stderr


def test_cifar_script_garbled_batch_clean_error(tmp_path):
    root, folder, data, labels = _cifar10_folder(tmp_path)
    (folder / "data_batch_1").write_bytes(b"garbled")
    cdata.write_checksums(str(folder), _files(folder))
    ck = tmp_path / "ck"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "dianet", "cifar.py"), "-a", "dia_resnet", "--depth", "8",
                        "--data-root", str(root), "--epochs", "1", "-c", str(ck), "--workers", "0"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "data_batch_1" in r.stderr and "Traceback" not in r.stderr
    assert not (ck / "log.txt").exists() and not (ck / "checkpoint.pth.tar").exists()
