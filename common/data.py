"""Datasets in their real formats, the papers' transforms, the bundled demo set, and samplers.

- CIFAR-10/100 from the standard python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``).
- ImageNet as ImageFolder (``train/``, ``val/``), or zipped as Swin-Transformer keeps it (``train.zip`` +
  ``train_map.txt``, ``val.zip`` + ``val_map.txt``), read from inside the zip, optionally cached in memory
  (all of it, or the share of one process).
- A demo set that is real data and needs no network: scikit-learn's 1,797 handwritten digits, upscaled to
  32x32 RGB with a fixed stratified split, written once in the CIFAR-10 pickle format so the CIFAR code path
  reads it, and once more as an ImageFolder of PNGs so the ImageNet code path reads it.
- ``SHA256SUMS`` manifests (``sha256sum`` format) written when a demo set is built and verified when it is read.
- Dataset files never run code: the CIFAR pickles are read with a restricted unpickler.
"""
import contextlib
import hashlib
import math
import os
import pickle
import random
import shutil
import sys

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import datasets, transforms

__all__ = [
    "DatasetNotFoundError",
    "DataFileError",
    "CIFARPickle",
    "read_cifar_pickle",
    "read_checksums",
    "verify_cifar_folder",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar_transforms",
    "imagenet_transforms",
    "build_demo_cifar",
    "build_demo_imagefolder",
    "write_checksums",
    "verify_checksums",
    "load_cifar",
    "load_imagefolder",
    "ZipImageFolder",
    "load_zip_imagefolder",
    "write_zip_imagefolder",
    "build_demo_zip",
    "CACHE_MODES",
    "SubsetShuffleSampler",
    "SeededAugment",
    "GlobalBatchSampler",
    "ShardSampler",
    "ContiguousDistributedSampler",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEMO_DIRNAME = "digits-demo"
DEMO_TEST_SIZE = 360
DEMO_SEED = 0
DEMO_IMAGEFOLDER_DIRNAME = "digits-demo-imagefolder"
DEMO_ZIP_DIRNAME = "digits-demo-zip"
CACHE_MODES = ("no", "full", "part")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CHECKSUMS_NAME = "SHA256SUMS"

_CIFAR_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", "data_batch_1 ... data_batch_5, test_batch, batches.meta"),
    "cifar100": ("cifar-100-python", "train, test, meta"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing; the message names the path, the expected layout and the demo alternative."""


def cifar_transforms(train, mean=CIFAR_MEAN, std=CIFAR_STD):
    """pytorch-classification CIFAR transforms (RandomCrop(32, 4) + flip for training)."""
    ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(mean, std)])


def imagenet_transforms(train, size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """torchvision ImageNet-example transforms."""
    if train:
        ops = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    else:
        ops = [transforms.Resize(resize), transforms.CenterCrop(size)]
    return transforms.Compose(ops + [transforms.ToTensor(), transforms.Normalize(mean, std)])


class DataFileError(ValueError):
    """A dataset file is corrupt, was changed after it was written, or holds something its format does not;
    the message names the file."""


# ---------------------------------------------------------------- safe CIFAR pickles
class _Refused(pickle.UnpicklingError):
    """The pickle asks for something the CIFAR format does not hold."""


def _checked_reconstruct(subtype, *args):
    if subtype is not np.ndarray:
        raise _Refused(f"array subtype {subtype!r}")
    return np.ndarray.__new__(subtype, *args)


def _checked_dtype(spec, *args):
    dtype = np.dtype(spec, *args)
    if dtype.hasobject:
        raise _Refused(f"object dtype {spec!r}")
    return dtype


def _latin1_encode(text, encoding="latin1"):
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1')
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise _Refused(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Reads what the CIFAR python format holds (dicts, lists, str/bytes, numbers, NumPy arrays of plain
    dtypes) and refuses every other global, so a crafted batch file cannot run code."""

    def find_class(self, module, name):
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refused type {module}.{name}") from None


def read_cifar_pickle(path):
    """One CIFAR python batch (``data_batch_1``, ``train``, ``batches.meta`` ...) read with the restricted
    unpickler (``latin1`` for the official Python 2 pickles). Never a full ``pickle.load``."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as err:
        raise DataFileError(f"{path}: not a plain CIFAR batch file ({err}); refusing to read it") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError, MemoryError) as err:
        raise DataFileError(f"{path}: corrupt or truncated CIFAR batch file ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: expected a dict, found a {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------- checksum manifests
def _digest(path, algo="sha256"):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_checksums(folder, files, manifest=CHECKSUMS_NAME):
    """Write ``<folder>/<manifest>`` in ``sha256sum`` format (``<hex>  <relative/path>``, sorted, ``/``
    separators) for ``files`` (paths relative to ``folder``); ``sha256sum -c`` in ``folder`` checks it too.
    Returns the manifest path."""
    rels = sorted(str(f).replace(os.sep, "/") for f in files)
    lines = [f"{_digest(os.path.join(folder, *rel.split('/')))}  {rel}\n" for rel in rels]
    path = os.path.join(folder, manifest)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    return path


def _read_manifest(path):
    entries = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            digest, sep, rel = line.partition(" ")
            rel = rel[1:] if rel[:1] in (" ", "*") else rel
            parts = rel.split("/")
            if (not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower())
                    or not rel or rel.startswith("/") or ".." in parts):
                raise DataFileError(f"{path}, line {lineno}: not a 'sha256  relative/path' line: {line!r}")
            entries[rel] = digest.lower()
    return entries


def read_checksums(folder, manifest=CHECKSUMS_NAME):
    """``{relative/path: sha256}`` from ``<folder>/<manifest>``, or None when the folder has no manifest."""
    path = os.path.join(folder, manifest)
    return _read_manifest(path) if os.path.isfile(path) else None


def verify_checksums(folder, manifest=CHECKSUMS_NAME, exhaustive=False, hint=""):
    """Check the files under ``folder`` against ``manifest``: a path (relative to ``folder`` or absolute) of a
    ``sha256sum``-format file, or a mapping ``{relative/path: sha256 hex}``.

    Raises :class:`DataFileError` naming every changed or missing file (and, with ``exhaustive=True``,
    every file present under ``folder`` that the manifest does not list, the manifest itself excepted);
    ``hint`` is appended to the message (e.g. how to rebuild). Returns the number of files checked.
    """
    if isinstance(manifest, (str, os.PathLike)):
        manifest_path = os.path.join(folder, manifest)
        if not os.path.isfile(manifest_path):
            raise DataFileError(f"checksum manifest {manifest_path!r} not found. {hint}".rstrip())
        entries, source = _read_manifest(manifest_path), manifest_path
    else:
        entries, manifest_path, source = dict(manifest), None, "the checksum manifest"
    problems = []
    for rel, digest in sorted(entries.items()):
        path = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(path):
            problems.append(f"missing: {path}")
        elif _digest(path) != digest.lower():
            problems.append(f"changed: {path}")
    if exhaustive:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, folder).replace(os.sep, "/")
                if rel not in entries and (manifest_path is None or not os.path.samefile(path, manifest_path)):
                    problems.append(f"not in the manifest: {path}")
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise DataFileError(
            f"{len(problems)} file(s) under {folder!r} do not match {source}:\n  " + "\n  ".join(shown)
            + (f"\n{hint}" if hint else ""))
    return len(entries)


# ---------------------------------------------------------------- integrity of the CIFAR files
def _official_md5s(dataset):
    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    table = dict(cls.train_list + cls.test_list)
    table[cls.meta["filename"]] = cls.meta["md5"]
    return table


def verify_cifar_folder(folder, dataset, names):
    """Integrity of the CIFAR files about to be read. A folder with a ``SHA256SUMS`` (the demo set
    writes one; ``write_checksums`` makes one for a custom set in the CIFAR layout) is checked against it;
    otherwise files with the official names are checked against the official archives' md5 sums."""
    recorded = read_checksums(folder)
    if recorded is not None:
        missing = [n for n in names if n not in recorded]
        if missing:
            raise DataFileError(f"{folder}: {', '.join(missing)} not listed in {CHECKSUMS_NAME}; record the set's "
                                f"checksums again with `python -m common.data checksums {folder}`")
        return verify_checksums(folder, {n: recorded[n] for n in names})
    official = _official_md5s(dataset)
    bad = [f"{os.path.join(folder, n)} (md5 {_digest(os.path.join(folder, n), 'md5')}, official {official[n]})"
           for n in names if n in official and _digest(os.path.join(folder, n), "md5") != official[n]]
    if bad:
        raise DataFileError(
            "CIFAR files do not match the official archive (corrupt, truncated or modified download):\n  "
            + "\n  ".join(bad) + f"\nDownload them again; for a deliberately custom set in this layout, record "
            f"its checksums with `python -m common.data checksums {folder}`.")


class CIFARPickle(Dataset):
    """CIFAR-10/100 from the python pickles, read safely and verified (same items as torchvision's CIFAR:
    ``(PIL image, label)``, with ``data`` (N, 32, 32, 3) uint8, ``targets``, ``classes``, ``class_to_idx``).

    Reads every ``data_batch_*`` present (CIFAR-10) or ``train`` / ``test`` (CIFAR-100)."""

    def __init__(self, root, dataset="cifar10", train=True, transform=None, target_transform=None):
        sub = _CIFAR_LAYOUT[dataset][0]
        folder = os.path.join(root, sub)
        if dataset == "cifar10":
            names = sorted(n for n in os.listdir(folder) if n.startswith("data_batch")) if train else ["test_batch"]
            label_key, meta_name, names_key = "labels", "batches.meta", "label_names"
        else:
            names = ["train" if train else "test"]
            label_key, meta_name, names_key = "fine_labels", "meta", "fine_label_names"
        meta_present = os.path.isfile(os.path.join(folder, meta_name))
        verify_cifar_folder(folder, dataset, names + ([meta_name] if meta_present else []))
        images, labels = [], []
        for name in names:
            path = os.path.join(folder, name)
            batch = read_cifar_pickle(path)
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                target = [int(v) for v in batch[label_key]]
            except (KeyError, ValueError, TypeError) as err:
                raise DataFileError(f"{path}: not a CIFAR batch (needs 'data' rows of 3072 bytes and "
                                    f"'{label_key}'): {type(err).__name__}: {err}") from None
            if len(target) != len(data):
                raise DataFileError(f"{path}: {len(data)} images but {len(target)} labels")
            images.append(data)
            labels += target
        self.data = np.concatenate(images).transpose(0, 2, 3, 1) if images else np.zeros((0, 32, 32, 3), np.uint8)
        self.targets = labels
        if meta_present:
            self.classes = list(read_cifar_pickle(os.path.join(folder, meta_name))[names_key])
        else:
            self.classes = [str(i) for i in range(max(labels, default=-1) + 1)]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        bad = [y for y in labels if not 0 <= y < len(self.classes)]
        if bad:
            raise DataFileError(f"{folder}: label {bad[0]} outside 0..{len(self.classes) - 1}")
        self.transform, self.target_transform = transform, target_transform
        self.root, self.train = root, train

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        from PIL import Image

        img, target = Image.fromarray(self.data[index]), self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


def _missing(path, layout, what):
    return DatasetNotFoundError(
        f"{what} not found at {path!r}.\n"
        f"Expected layout: {layout}.\n"
        f"Download the dataset there, point the script at it (e.g. --data-root), or use the bundled demo "
        f"dataset instead (--demo; built offline from scikit-learn's handwritten digits)."
    )


def load_cifar(root, dataset="cifar10", train=True, transform=None):
    if dataset not in _CIFAR_LAYOUT:
        raise ValueError(f"dataset must be one of {sorted(_CIFAR_LAYOUT)}, got {dataset!r}")
    sub, files = _CIFAR_LAYOUT[dataset]
    folder = os.path.join(root, sub)
    split_files = ["test_batch"] if dataset == "cifar10" else ["test"]
    if train:
        split_files = ["data_batch_1"] if dataset == "cifar10" else ["train"]
    if not all(os.path.isfile(os.path.join(folder, f)) for f in split_files):
        raise _missing(folder, f"{root}/{sub}/{{{files}}} (the python pickle version)", dataset.upper())
    return CIFARPickle(root, dataset, train=train, transform=transform)


def load_imagefolder(root, split, transform=None):
    """``<root>/<split>/<class>/<image>`` through torchvision's ImageFolder (ImageNet, or the digits demo of
    :func:`build_demo_imagefolder`). A missing or empty split stops with one message naming the path, the layout
    and ``--demo``."""
    folder = os.path.join(root, split)
    try:
        if not os.path.isdir(folder):
            raise FileNotFoundError(folder)
        return datasets.ImageFolder(folder, transform=transform)
    except FileNotFoundError as err:  # no folder, no class folders, or no image in any class folder
        found = "" if not os.path.isdir(folder) else f" ({err})"
        raise DatasetNotFoundError(
            f"ImageNet split {split!r} not found at {folder!r}{found}.\n"
            f"Expected layout: {root}/{{train,val}}/<class>/<image>.JPEG (ImageFolder; val sorted into class "
            f"folders).\n"
            f"Download the dataset there and point the script at it, or use the bundled demo ImageFolder instead "
            f"(--demo; {DEMO_IMAGEFOLDER_DIRNAME}/{{train,val}}/<digit>/*.png, built offline from scikit-learn's "
            f"handwritten digits by common.data.build_demo_imagefolder)."
        ) from None


# ---------------------------------------------------------------- zipped ImageFolder (Swin-Transformer's layout)
_ZIP_LAYOUT = ("{root}/{split}.zip (the images, at the paths the map file gives) and {root}/{split}_map.txt "
               "(one '<path inside the zip>\\t<class index>' line per image, e.g. 'n01440764/n01440764_10026.JPEG\\t0'"
               "); write it from an ImageFolder with common.data.write_zip_imagefolder")


class _ZipBank:
    """One open :class:`zipfile.ZipFile` per (process, archive): a DataLoader worker opens its own handle."""

    _files = {}

    @classmethod
    def read(cls, archive, member):
        import zipfile

        key = (os.getpid(), archive)
        zf = cls._files.get(key)
        if zf is None:
            zf = cls._files[key] = zipfile.ZipFile(archive, "r")
        return zf.read(member)


def _read_map(path, archive_names=None):
    samples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            name, sep, label = line.rpartition("\t")
            if not sep or not name or not label.strip().lstrip("-").isdigit():
                raise DataFileError(f"{path}, line {lineno}: expected '<path inside the zip>\\t<class index>', "
                                    f"found {line!r}")
            name = name.strip("/")
            if os.path.splitext(name)[1].lower() not in IMG_EXTENSIONS:
                raise DataFileError(f"{path}, line {lineno}: {name!r} is not an image file "
                                    f"({', '.join(IMG_EXTENSIONS)})")
            if archive_names is not None and name not in archive_names:
                raise DataFileError(f"{path}, line {lineno}: {name!r} is not in the zip file")
            samples.append((name, int(label)))
    if not samples:
        raise DataFileError(f"{path} lists no image")
    return samples


class ZipImageFolder(Dataset):
    """Images read from inside ``<root>/<split>.zip``, listed with their class index in ``<root>/<split>_map.txt``
    (Swin-Transformer's zipped ImageNet; samples in the map file's order), as ``(PIL RGB image or
    transform(image), class index)``.

    ``cache_mode``: ``"no"`` reads every image from the zip when it is loaded; ``"full"`` reads the bytes of
    every image into memory once; ``"part"`` caches only the images of ``cache_indices`` (the share of this
    process: give the indices its sampler draws; default the ``index % world_size == rank`` share, as Swin),
    the others are read from the zip. Cached bytes are shared by forked DataLoader workers.
    """

    def __init__(self, root, split, transform=None, target_transform=None, cache_mode="no", cache_indices=None,
                 rank=0, world_size=1):
        if cache_mode not in CACHE_MODES:
            raise ValueError(f"cache_mode must be one of {CACHE_MODES}, got {cache_mode!r}")
        self.root, self.split = root, split
        self.archive = os.path.join(root, f"{split}.zip")
        self.map_file = os.path.join(root, f"{split}_map.txt")
        missing = [p for p in (self.archive, self.map_file) if not os.path.isfile(p)]
        if missing:
            raise DatasetNotFoundError(
                f"zipped split {split!r}: {' and '.join(repr(p) for p in missing)} not found.\n"
                f"Expected layout: {_ZIP_LAYOUT.format(root=root, split=split)}.\n"
                f"Point the script at that folder, drop --zip to read an ImageFolder, or use the bundled demo "
                f"(--demo --zip; built offline by common.data.build_demo_zip).")
        import zipfile

        try:
            with zipfile.ZipFile(self.archive) as zf:
                names = {n.strip("/") for n in zf.namelist()}
        except zipfile.BadZipFile as err:
            raise DataFileError(f"{self.archive} is not a zip file: {err}") from None
        self.samples = _read_map(self.map_file, names)
        self.targets = [t for _, t in self.samples]
        self.classes = sorted(set(self.targets))
        self.transform, self.target_transform = transform, target_transform
        self.cache_mode = cache_mode
        if cache_mode == "full":
            wanted = range(len(self.samples))
        elif cache_mode == "part":
            if callable(cache_indices):  # of the number of images, known once the map file is read
                cache_indices = cache_indices(len(self.samples))
            wanted = (range(rank, len(self.samples), world_size) if cache_indices is None
                      else sorted(set(int(i) for i in cache_indices)))
        else:
            wanted = ()
        self.cache = {i: _ZipBank.read(self.archive, self.samples[i][0]) for i in wanted}

    def __len__(self):
        return len(self.samples)

    def read_bytes(self, index):
        data = self.cache.get(index)
        return data if data is not None else _ZipBank.read(self.archive, self.samples[index][0])

    def __getitem__(self, index):
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.read_bytes(index))) as img:
            image = img.convert("RGB")
        target = self.samples[index][1]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


def load_zip_imagefolder(root, split, transform=None, cache_mode="no", cache_indices=None, rank=0, world_size=1):
    """:class:`ZipImageFolder` of ``<root>/<split>.zip`` + ``<root>/<split>_map.txt``; a missing file stops with
    one message naming the path and the layout."""
    return ZipImageFolder(root, split, transform=transform, cache_mode=cache_mode, cache_indices=cache_indices,
                          rank=rank, world_size=world_size)


def write_zip_imagefolder(src_root, dst_root, splits=("train", "val")):
    """Write the ImageFolder ``<src_root>/<split>/<class>/<image>`` as ``<dst_root>/<split>.zip`` (entries
    ``<class>/<image>``, stored uncompressed) and ``<dst_root>/<split>_map.txt`` (``<class>/<image>\\t<index>``),
    in torchvision ImageFolder's order and class indices, so both read the same samples. Returns ``dst_root``."""
    import zipfile

    os.makedirs(dst_root, exist_ok=True)
    for split in splits:
        folder = datasets.ImageFolder(os.path.join(src_root, split))
        base = os.path.join(folder.root, "")
        archive, map_file = os.path.join(dst_root, f"{split}.zip"), os.path.join(dst_root, f"{split}_map.txt")
        tmp = f".tmp{os.getpid()}"
        with zipfile.ZipFile(archive + tmp, "w", compression=zipfile.ZIP_STORED) as zf, \
                open(map_file + tmp, "w", encoding="utf-8", newline="\n") as mf:
            for path, target in folder.samples:
                rel = path[len(base):].replace(os.sep, "/")
                info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))  # same bytes on every build
                with open(path, "rb") as f:
                    zf.writestr(info, f.read())
                mf.write(f"{rel}\t{target}\n")
        os.replace(archive + tmp, archive)
        os.replace(map_file + tmp, map_file)
    return dst_root


def build_demo_zip(root):
    """The digits demo ImageFolder (:func:`build_demo_imagefolder`) zipped in Swin's layout under
    ``<root>/digits-demo-zip/`` (``train.zip``, ``train_map.txt``, ``val.zip``, ``val_map.txt``; once).
    Returns that folder (for :func:`load_zip_imagefolder`)."""
    folder = build_demo_imagefolder(root)
    dst = os.path.join(root, DEMO_ZIP_DIRNAME)
    if all(os.path.isfile(os.path.join(dst, f"{s}{e}")) for s in ("train", "val") for e in (".zip", "_map.txt")):
        return dst
    tmp = dst + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_zip_imagefolder(folder, tmp)
    _publish_dir(tmp, dst)
    return dst



def _publish_dir(tmp, dst):
    """Move the finished folder ``tmp`` to ``dst`` in one rename; when another process got there first, its
    (identical) copy stays and ``tmp`` is removed."""
    try:
        os.replace(tmp, dst)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)

def _digits_as_cifar():
    """sklearn digits (8x8, 0..16) -> uint8 (N, 32, 32, 3), bilinear upscaling; fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    imgs = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    big = torch.nn.functional.interpolate(imgs, size=(32, 32), mode="bilinear", align_corners=False)
    big = (big.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    rgb = np.repeat(big[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=DEMO_TEST_SIZE, random_state=DEMO_SEED, stratify=labels
    )
    return (rgb[idx_train], labels[idx_train]), (rgb[idx_test], labels[idx_test])


def _write_batch(path, images, labels, name):
    # CIFAR pickles store rows of 3072 bytes: R plane, G plane, B plane (row-major 32x32 each).
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    obj = {
        "batch_label": name,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(data, dtype=np.uint8),
        "filenames": [f"digit_{name.replace(' ', '_')}_{i:05d}.png" for i in range(len(labels))],
    }
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def build_demo_cifar(root):
    """Write the digits demo set under ``<root>/digits-demo/cifar-10-batches-py/`` (once) and return the
    dataset root to pass to :func:`load_cifar` (``dataset='cifar10'``)."""
    demo_root = os.path.join(root, DEMO_DIRNAME)
    folder = os.path.join(demo_root, "cifar-10-batches-py")
    marker = os.path.join(folder, "batches.meta")
    if os.path.isfile(marker) and read_checksums(folder) is not None:
        return demo_root
    if os.path.isdir(folder):  # written by an older version, without checksums: rebuild (it is deterministic)
        shutil.rmtree(folder, ignore_errors=True)
    (xtr, ytr), (xte, yte) = _digits_as_cifar()
    tmp = folder + f".tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(ytr)), 5)):
        _write_batch(os.path.join(tmp, f"data_batch_{i + 1}"), xtr[chunk], ytr[chunk], f"training batch {i + 1} of 5")
    _write_batch(os.path.join(tmp, "test_batch"), xte, yte, "testing batch 1 of 1")
    meta = {"label_names": [str(d) for d in range(10)], "num_cases_per_batch": int(math.ceil(len(ytr) / 5)),
            "num_vis": 3072}
    with open(os.path.join(tmp, "batches.meta"), "wb") as f:
        pickle.dump(meta, f, protocol=2)
    write_checksums(tmp, os.listdir(tmp))
    _publish_dir(tmp, folder)
    return demo_root


# ---------------------------------------------------------------- digits demo as an ImageFolder
def _write_png(path, image):
    from PIL import Image

    # No metadata chunks and fixed zlib settings: the same pixels give the same bytes on every build.
    image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    image.save(path, format="PNG", optimize=False, compress_level=9)


def build_demo_imagefolder(root, verify=True):
    """Write the digits demo set as an ImageFolder under ``<root>/digits-demo-imagefolder/`` (once) and return
    that folder, which :func:`load_imagefolder` reads (``split='train'`` / ``'val'``).

    Same images and split as the CIFAR-format demo (:func:`_digits_as_cifar`): 1,437 train / 360 val images,
    32x32 RGB PNGs in ``train/<digit>/<index>.png`` and ``val/<digit>/<index>.png`` (``<index>`` = position in
    the split, 5 digits). 32x32 keeps every bit of the 8x8 originals, reads fast, and goes through the ImageNet
    transforms unchanged (RandomResizedCrop / Resize + CenterCrop upscale it to the crop size; pass a smaller
    crop for quick CPU runs). The folder is written to a temporary name and renamed, so a reader never sees half
    of it; ``SHA256SUMS`` (``sha256sum`` format) is written with it and, when ``verify``, checked every time the
    folder is reused: a changed, missing or added file raises :class:`DataFileError` naming it.
    """
    demo_root = os.path.join(root, DEMO_IMAGEFOLDER_DIRNAME)
    hint = f"Delete {demo_root!r} to rebuild the demo set."
    if os.path.isdir(demo_root):
        if verify:
            verify_checksums(demo_root, CHECKSUMS_NAME, exhaustive=True, hint=hint)
        return demo_root
    (xtr, ytr), (xte, yte) = _digits_as_cifar()
    tmp = demo_root + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    files = []
    for split, images, labels in (("train", xtr, ytr), ("val", xte, yte)):
        for cls in range(10):
            os.makedirs(os.path.join(tmp, split, str(cls)))
        for i, (image, label) in enumerate(zip(images, labels)):
            rel = f"{split}/{int(label)}/{i:05d}.png"
            _write_png(os.path.join(tmp, *rel.split("/")), image)
            files.append(rel)
    write_checksums(tmp, files)
    _publish_dir(tmp, demo_root)
    return demo_root


# ---------------------------------------------------------------- per-sample seeded augmentation
def _sample_seed(seed, epoch, index):
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def _seeded_host_rngs(seed):
    """Seed torch's CPU generator, Python's ``random`` and NumPy's global RNG with ``seed`` for the block, then
    put all three back as they were (CUDA generators are left alone)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class SeededAugment(Dataset):
    """Wraps a dataset so each sample's random augmentation depends only on (seed, epoch, index).

    The same image gets the same crop/flip whichever process, worker or resumed run loads it, which makes
    multi-process runs equal to single-process ones and resumed runs equal to uninterrupted ones. torch's CPU
    generator, Python's ``random`` and NumPy's global RNG are all seeded per sample (torchvision transforms draw
    from torch; timm's RandAugment / AutoAugment / random erasing from ``random`` and NumPy) and restored
    afterwards, so the caller's random streams are untouched.
    """

    def __init__(self, dataset, seed=0):
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with _seeded_host_rngs(_sample_seed(self.seed, self.epoch, index)):
            return self.dataset[index]


def _epoch_order(n, shuffle, seed, epoch):
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


class GlobalBatchSampler(Sampler):
    """Batch sampler that cuts each *global* batch into contiguous per-rank shards.

    With ``world_size`` processes each rank sees its share of exactly the images a single process would see in
    the same step, so a DDP run (with synchronised BN) reproduces the single-process run. The order depends on
    (seed, epoch) only: call :meth:`set_epoch` every epoch.
    """

    def __init__(self, n, global_batch, rank=0, world_size=1, shuffle=True, seed=0, drop_last=False):
        if global_batch < world_size:
            raise ValueError(f"batch size {global_batch} is smaller than the number of processes {world_size}")
        self.n, self.global_batch = n, global_batch
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.n // self.global_batch if self.drop_last else math.ceil(self.n / self.global_batch)

    def __iter__(self):
        order = _epoch_order(self.n, self.shuffle, self.seed, self.epoch)
        for step in range(len(self)):
            batch = order[step * self.global_batch:(step + 1) * self.global_batch]
            if len(batch) < self.world_size:  # every rank must take part in the step
                return
            shards = np.array_split(np.asarray(batch), self.world_size)
            yield shards[self.rank].tolist()


class ShardSampler(Sampler):
    """Evaluation sampler: contiguous, non-overlapping shards with no padding (sums over ranks are exact)."""

    def __init__(self, n, rank=0, world_size=1):
        bounds = np.linspace(0, n, world_size + 1).round().astype(int)
        self.indices = list(range(bounds[rank], bounds[rank + 1]))

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class SubsetShuffleSampler(Sampler):
    """A fixed subset of indices (one process's share), reshuffled every epoch from (seed, epoch) (call
    :meth:`set_epoch`): Swin's training sampler for ``--zip --cache-mode part``, where each process keeps reading
    the images it cached."""

    def __init__(self, indices, shuffle=True, seed=0):
        self.indices = [int(i) for i in indices]
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter([self.indices[i] for i in _epoch_order(len(self.indices), self.shuffle, self.seed, self.epoch)])


class ContiguousDistributedSampler(torch.utils.data.DistributedSampler):
    """torch's DistributedSampler (same per-epoch permutation, seeded by ``seed + epoch``, same padding by
    repeating the first indices) but each rank takes a contiguous slice of it instead of every
    ``world_size``-th index: the Deformable-DETR / DAC-DETR sampler."""

    def __iter__(self):
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[:self.total_size]
        else:
            while len(order) < self.total_size:  # pad by repeating from the start, as torch does
                order += order[:self.total_size - len(order)]
        start = self.rank * self.num_samples
        return iter(order[start:start + self.num_samples])


def _main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m common.data", description="dataset utilities")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("checksums", help=f"record the sha256 of every file of FOLDER in FOLDER/{CHECKSUMS_NAME}")
    c.add_argument("folder")
    v = sub.add_parser("verify", help=f"check FOLDER against its {CHECKSUMS_NAME}")
    v.add_argument("folder")
    args = p.parse_args(argv)
    if not os.path.isdir(args.folder):
        p.error(f"not a folder: {args.folder}")
    try:
        if args.cmd == "checksums":
            write_checksums(args.folder, [n for n in os.listdir(args.folder) if n != CHECKSUMS_NAME
                                          and os.path.isfile(os.path.join(args.folder, n))])
            print(f"wrote {os.path.join(args.folder, CHECKSUMS_NAME)}")
        else:
            verify_checksums(args.folder)
            print(f"{args.folder}: all files match {CHECKSUMS_NAME}")
    except DataFileError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _main()
