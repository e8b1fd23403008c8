"""Full CIFAR-100 (the 25th task, spec §8) from a local copy in torchvision's pickle format.

The task folder holds ``cifar-100-python/{train,test,meta}``. The ``train`` and ``test`` splits
are torchvision's files; tuning mode's ``train90`` / ``val10`` are a seeded partition of the
training set (:func:`cifar_val_indices`). :class:`Cifar100Folder` never downloads.

The files are pickles, read from the user's data folder with a presence check rather than
torchvision's md5 check (so re-packed copies are accepted). A plain ``pickle.load`` would run any
code a tampered file names, so they are read with :class:`CifarUnpickler`, which resolves only the
few globals an ndarray pickle needs (:data:`CIFAR_PICKLE_GLOBALS`) and refuses every other one
(``os.system``, ``builtins.open``, ...) with a ``ValueError`` naming the file and the global, before
anything runs: no pickle executes code.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision.datasets import CIFAR100, VisionDataset

CIFAR_SPLITS = ("train", "test", "train90", "val10")
CIFAR_FOLDER = "cifar-100-python"
CIFAR_FILES = ("train", "test", "meta")
CIFAR_LAYOUT = (f"<task_dir>/{CIFAR_FOLDER}/{{{','.join(CIFAR_FILES)}}}: torchvision's CIFAR-100 pickles "
                "(train/test: dicts with 'data' uint8 (N, 3072) and 'fine_labels' in [0, 100); "
                "meta: 'fine_label_names')")

# What the pickles may name. Dicts, lists, str, bytes and ints need no global. The original files
# (Python 2 cPickle, protocol 2) build their uint8 ``data`` array from numpy.core.multiarray._reconstruct,
# numpy.ndarray and numpy.dtype; a copy re-pickled under numpy 2 spells the first numpy._core.multiarray,
# one pickled with protocol 5 uses numeric._frombuffer instead, numpy scalars (labels stored as
# np.int64) use multiarray.scalar, and Python 3's protocols 0-2 store bytes as _codecs.encode(str, 'latin1').
CIFAR_PICKLE_GLOBALS = tuple(f"{m}.{n}" for ms, n in (
    (("numpy.core.multiarray", "numpy._core.multiarray"), "_reconstruct"),
    (("numpy",), "ndarray"),
    (("numpy",), "dtype"),
    (("numpy.core.multiarray", "numpy._core.multiarray"), "scalar"),
    (("numpy.core.numeric", "numpy._core.numeric"), "_frombuffer"),
    (("_codecs",), "encode"),
) for m in ms)


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python's pickler uses it (``bytes`` under protocols < 3): latin-1 only."""
    if not isinstance(text, str) or encoding.lower() not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode is only admitted as encode(str, 'latin1'), "
                                     f"got encode({type(text).__name__}, {encoding!r}, {errors!r})")
    return codecs.encode(text, "latin1")


# The numpy callables are taken from numpy's own reductions, so resolving either spelling needs no
# numpy.core / numpy._core import (deprecated under numpy 2, numpy._core absent from older numpy 1.x).
_BY_NAME = {"_reconstruct": np.empty(0).__reduce__()[0], "ndarray": np.ndarray, "dtype": np.dtype,
            "scalar": np.uint8(0).__reduce__()[0], "_frombuffer": np.empty(1).__reduce_ex__(5)[0],
            "encode": _latin1_encode}
_ADMITTED = {g: _BY_NAME[g.rsplit(".", 1)[1]] for g in CIFAR_PICKLE_GLOBALS}


class RefusedGlobal(pickle.UnpicklingError):
    """A CIFAR-100 pickle named a global outside :data:`CIFAR_PICKLE_GLOBALS`."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class CifarUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`CIFAR_PICKLE_GLOBALS` (raises :class:`RefusedGlobal`).

    Every way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST, OBJ, EXT*) goes through
    ``find_class``, and persistent ids are refused by the base class, so nothing outside the list runs.
    """

    def find_class(self, module: str, name: str):
        found = _ADMITTED.get(f"{module}.{name}")
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found


# [decision] CIFAR-100 tuning mode holds out round(10 %) of the training set, drawn by
# torch.randperm under this seed (same on every machine); val10 = that part, train90 = the rest.
CIFAR_VAL_SEED = 0
CIFAR_VAL_FRACTION = 0.1


def cifar_val_indices(n: int, seed: int = CIFAR_VAL_SEED) -> tuple[list[int], list[int]]:
    """(train90, val10) indices into a CIFAR training set of ``n`` images, each sorted.

    val10 is ``round(0.1 * n)`` indices drawn by ``torch.randperm`` under a fixed-seed generator,
    train90 the rest; both are reproducible across machines and disjoint, their union is ``range(n)``.
    """
    n_val = round(CIFAR_VAL_FRACTION * n)
    if not 0 < n_val < n:
        raise ValueError(f"cannot hold out {CIFAR_VAL_FRACTION:.0%} of a CIFAR training set of {n} images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


class Cifar100Folder(CIFAR100):
    """Full CIFAR-100 from a local copy in torchvision's format; never downloads.

    ``root`` is the task folder holding ``cifar-100-python/{train,test,meta}``; ``train`` picks the
    50,000-image training file or the 10,000-image test file. Items are torchvision's
    ``(transform(RGB PIL image), int fine label)``.

    torchvision's md5 check is replaced by a presence check (it would refuse any re-packed copy; the
    workflow records its own sha256 of the files) and a structure check: ``data`` uint8 (N, 3072)
    (N row-major CHW 32x32 images, kept as ``self.data`` (N, 32, 32, 3)), ``fine_labels`` N ints in
    [0, 100), meta with 100 ``fine_label_names``. Unlike torchvision it unpickles with
    :class:`CifarUnpickler`, so a tampered file that names any other global (``os.system``, ...) is
    refused with a ``ValueError`` naming the file and the global, and runs nothing.
    """

    def __init__(self, root: str | os.PathLike, train: bool = True, transform: Callable | None = None):
        # torchvision's CIFAR10.__init__ would md5-check and reshape without looking; this loads the
        # same files itself so that every structural problem names its file.
        VisionDataset.__init__(self, root, transform=transform)
        self.train = train
        self._check_integrity()
        file = Path(self.root) / self.base_folder / (self.train_list if train else self.test_list)[0][0]
        entry = self._unpickle(file)
        if not isinstance(entry, dict) or "data" not in entry or "fine_labels" not in entry:
            keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise ValueError(f"{file}: expected a dict with keys 'data' and 'fine_labels', got {keys}; "
                             f"expected {CIFAR_LAYOUT}")
        data, targets = np.asarray(entry["data"]), np.asarray(entry["fine_labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data):
            raise ValueError(f"{file}: 'data' must be uint8 of shape (N, 3072) with N > 0, got {data.dtype} "
                             f"{data.shape}; expected {CIFAR_LAYOUT}")
        if targets.shape != (len(data),) or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"{file}: 'fine_labels' must be {len(data)} ints (one per image), got {targets.dtype} "
                             f"of shape {targets.shape}")
        bad = np.flatnonzero((targets < 0) | (targets >= 100))
        if len(bad):
            raise ValueError(f"{file}: fine_labels[{bad[0]}] = {targets[bad[0]]} outside [0, 100) "
                             f"({len(bad)} of {len(targets)} labels out of range)")
        self.data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3) HWC
        self.targets = targets.tolist()
        self._load_meta()

    def _unpickle(self, path: Path):
        try:
            with open(path, "rb") as f:
                return CifarUnpickler(f, encoding="latin1").load()
        except RefusedGlobal as e:
            raise ValueError(f"{path}: refuses to unpickle global {e.name!r}: a CIFAR-100 pickle may only name "
                             f"the globals of numpy arrays and bytes ({', '.join(CIFAR_PICKLE_GLOBALS)}), since "
                             f"any other could run code; replace it with a clean copy, expected {CIFAR_LAYOUT}"
                             ) from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, ImportError,
                UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a pickle in torchvision's CIFAR-100 format ({type(e).__name__}: {e}); "
                             f"expected {CIFAR_LAYOUT}") from e

    def _check_integrity(self) -> bool:
        """Presence check in place of torchvision's md5 check; a missing file raises FileNotFoundError."""
        folder = Path(self.root) / self.base_folder
        if not folder.is_dir():
            raise FileNotFoundError(f"missing CIFAR-100 folder {folder}; expected {CIFAR_LAYOUT}")
        for name in CIFAR_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"missing CIFAR-100 file {folder / name}; expected {CIFAR_LAYOUT}")
        return True

    def _load_meta(self) -> None:
        """Class names from ``meta`` (no md5 check)."""
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        meta = self._unpickle(path)
        names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
        if not isinstance(names, (list, tuple)) or len(names) != 100:
            raise ValueError(f"{path}: expected a dict whose {self.meta['key']!r} lists 100 class names; "
                             f"expected {CIFAR_LAYOUT}")
        self.classes = list(names)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def download(self) -> None:
        raise RuntimeError(f"Cifar100Folder never downloads; put the data at {Path(self.root) / self.base_folder}")


def cifar_split(task_dir: Path, split: str, transform: Callable | None) -> torch.utils.data.Dataset:
    """One split of :data:`CIFAR_SPLITS`; train90 / val10 are ``Subset`` views of the training set."""
    if split not in CIFAR_SPLITS:
        raise ValueError(f"unknown CIFAR-100 split {split!r}; expected one of {list(CIFAR_SPLITS)}")
    ds = Cifar100Folder(task_dir, train=split != "test", transform=transform)
    if split in ("train", "test"):
        return ds
    train90, val10 = cifar_val_indices(len(ds))
    return torch.utils.data.Subset(ds, train90 if split == "train90" else val10)


def check_cifar(task_dir: Path) -> tuple[dict[str, int], list[Path]]:
    """Load both pickles of a CIFAR-100 task folder (structure checks); ({split: n}, the pickle files)."""
    n_train = len(Cifar100Folder(task_dir, train=True))
    n_test = len(Cifar100Folder(task_dir, train=False))
    train90, val10 = cifar_val_indices(n_train)
    counts = {"train": n_train, "test": n_test, "train90": len(train90), "val10": len(val10)}
    return counts, [task_dir / CIFAR_FOLDER / f for f in CIFAR_FILES]
