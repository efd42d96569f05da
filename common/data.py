"""Datasets in their real formats, the papers' transforms, the bundled demo set, and samplers.

- CIFAR-10/100 from the standard python pickles (``cifar-10-batches-py/``, ``cifar-100-python/``).
- ImageNet as ImageFolder (``train/``, ``val/``).
- A demo set that is real data and needs no network: scikit-learn's 1,797 handwritten digits, upscaled to
  32x32 RGB with a fixed stratified split, written once in the CIFAR-10 pickle format so the CIFAR code path
  reads it.
"""
import hashlib
import math
import os
import pickle

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import datasets, transforms

__all__ = [
    "DatasetNotFoundError",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar_transforms",
    "imagenet_transforms",
    "build_demo_cifar",
    "load_cifar",
    "load_imagefolder",
    "SeededAugment",
    "GlobalBatchSampler",
    "ShardSampler",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEMO_DIRNAME = "digits-demo"
DEMO_TEST_SIZE = 360
DEMO_SEED = 0

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


class _CIFAR10NoMD5(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader without the md5 check of the official archive (reads any folder in the
    standard pickle layout, e.g. the demo set). Only the batch files that exist are read."""

    def __init__(self, root, train=True, transform=None):
        folder = os.path.join(root, self.base_folder)
        self.train_list = [[n, None] for n in sorted(os.listdir(folder)) if n.startswith("data_batch")]
        self.test_list = [["test_batch", None]]
        self.meta = dict(self.meta, md5=None)
        super().__init__(root, train=train, transform=transform, download=False)

    def _check_integrity(self):
        return True


class _CIFAR100NoMD5(datasets.CIFAR100):
    train_list = [["train", None]]
    test_list = [["test", None]]
    meta = dict(datasets.CIFAR100.meta, md5=None)

    def __init__(self, root, train=True, transform=None):
        super().__init__(root, train=train, transform=transform, download=False)

    def _check_integrity(self):
        return True


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
    cls = _CIFAR10NoMD5 if dataset == "cifar10" else _CIFAR100NoMD5
    return cls(root, train=train, transform=transform)


def load_imagefolder(root, split, transform=None):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise _missing(folder, f"{root}/{{train,val}}/<class>/<image>.JPEG (ImageFolder)", "ImageNet split")
    return datasets.ImageFolder(folder, transform=transform)


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
    if os.path.isfile(marker):
        return demo_root
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
    try:
        os.replace(tmp, folder)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return demo_root


def _sample_seed(seed, epoch, index):
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededAugment(Dataset):
    """Wraps a dataset so each sample's random augmentation depends only on (seed, epoch, index).

    The same image gets the same crop/flip whichever process, worker or resumed run loads it, which makes
    multi-process runs equal to single-process ones and resumed runs equal to uninterrupted ones.
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.epoch, index))
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
