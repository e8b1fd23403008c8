"""Datasets and task table (ESTA spec §8): canonical task ids, on-disk layouts, splits and readers.

The paper's 25 tasks come in three on-disk formats, plus the generated embedded suite:

- **VTAB-1k** (``vtab/*``, 19 tasks) and **embedded** (``embedded/*``): a task folder with list files
  ``<split>.txt`` whose lines are ``images/<split>/<NNNNNN>.jpg <label>`` (:class:`VtabFolder`).
- **FGVC** (``fgvc/*``, 5 tasks): VPT's folders with ``train.json``, ``val.json``, ``test.json``
  mapping an image path to a class id; ids are remapped to ``0..C-1`` by sorting (:class:`FgvcJson`).
- **CIFAR-100** (``cifar100``): torchvision's pickles in ``cifar-100-python/`` (:class:`Cifar100Folder`).

One API serves every suite:

- ``TASKS`` / :func:`task_info`: the one table of tasks (classes, VTAB group, folder under the data
  root). Ids are prefixed by suite, so ``vtab/oxford_flowers102`` and ``fgvc/oxford_flowers`` differ.
- :func:`mode_splits`: (training split, evaluation split) of a task in ``tuning`` mode (selects
  stitches) or ``final`` mode (produces the reported numbers), spec §8 "Splits".
- :func:`open_split`: one split of any task as a dataset of ``(float (3, S, S), int label)``.
- :func:`check_task`: validates a task's whole layout before any training and describes it (split
  sizes, sha256 of list files) for the workflow's manifest.
- :func:`write_vtab_task`: the one writer of the VTAB-1k layout (embedded tasks, test fixtures).

Nothing here downloads anything: a missing folder or file fails with its path and the layout expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms
from torchvision.datasets import CIFAR100, VisionDataset

GROUPS = ("Natural", "Specialized", "Structured", "FGVC")


def _is_relative_inside(path: str) -> bool:
    """True for a relative posix path that stays inside its parent ('' counts: the parent itself)."""
    p = PurePosixPath(path)
    return not p.is_absolute() and ".." not in p.parts and "\\" not in path


@dataclass(frozen=True)
class TaskInfo:
    """One row of the task table.

    Args:
        task_id: canonical id, ``<suite>/<name>`` (``cifar100`` for full CIFAR-100).
        suite: ``vtab``, ``fgvc``, ``cifar`` or ``embedded``; decides the on-disk format.
        name: the task's name inside its suite.
        num_classes: number of classes (>= 2).
        group: VTAB group (Natural / Specialized / Structured) or FGVC.
        folder: the task's folder relative to a data root (posix). Empty means ``<suite>/<name>``.
        image_dir: FGVC only: the image root inside ``folder`` that json paths are relative to
            (``""``: the folder itself).
    """

    task_id: str
    suite: str
    name: str
    num_classes: int
    group: str
    folder: str = ""
    image_dir: str = ""

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"task {self.task_id!r}: num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.group not in GROUPS:
            raise ValueError(f"task {self.task_id!r}: group {self.group!r} is not one of {GROUPS}")
        if not self.suite or not self.name or "/" in self.name:
            raise ValueError(f"task {self.task_id!r}: bad suite {self.suite!r} or name {self.name!r}")
        if not self.folder:
            object.__setattr__(self, "folder", f"{self.suite}/{self.name}")
        for field in ("folder", "image_dir"):
            value = getattr(self, field)
            if not _is_relative_inside(value):
                raise ValueError(f"task {self.task_id!r}: {field} {value!r} must be a relative posix path "
                                 "without '..'")


# (name, classes) per VTAB-1k group, exactly as spec §8. The folder names of the widely distributed
# VTAB-1k copy equal these names.
_VTAB = {
    "Natural": [("cifar", 100), ("caltech101", 102), ("dtd", 47), ("oxford_flowers102", 102),
                ("oxford_iiit_pet", 37), ("svhn", 10), ("sun397", 397)],
    "Specialized": [("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45), ("diabetic_retinopathy", 5)],
    "Structured": [("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4), ("dsprites_loc", 16),
                   ("dsprites_ori", 16), ("smallnorb_azi", 18), ("smallnorb_ele", 9)],
}
# (name, classes, VPT's folder name, image root inside it) per FGVC task, spec §8.
_FGVC = [("cub", 200, "CUB_200_2011", "images"), ("nabirds", 555, "nabirds", "images"),
         ("oxford_flowers", 102, "OxfordFlower", ""), ("stanford_dogs", 120, "Stanford-dogs", "Images"),
         ("stanford_cars", 196, "Stanford-cars", "")]
# The embedded suite (32x32 images generated offline by esta/embedded.py, which holds only the
# generators keyed by these names). Defined here so the table stays one table and data.py never
# imports embedded.py (embedded.py imports this module for write_vtab_task).
_EMBEDDED = [("digits", "Natural", 10), ("mnist", "Natural", 10), ("textures", "Natural", 10),
             ("medical", "Specialized", 5),
             ("count", "Structured", 6), ("sprite_loc", "Structured", 16), ("sprite_ori", "Structured", 8)]


def _build_tasks() -> dict[str, TaskInfo]:
    rows = [TaskInfo(f"vtab/{n}", "vtab", n, c, g, folder=f"vtab-1k/{n}") for g, items in _VTAB.items()
            for n, c in items]
    rows += [TaskInfo(f"fgvc/{n}", "fgvc", n, c, "FGVC", folder=f"fgvc/{d}", image_dir=i) for n, c, d, i in _FGVC]
    rows.append(TaskInfo("cifar100", "cifar", "cifar100", 100, "Natural", folder="cifar100"))
    rows += [TaskInfo(f"embedded/{n}", "embedded", n, c, g, folder=f"embedded/{n}") for n, g, c in _EMBEDDED]
    return {r.task_id: r for r in rows}


TASKS: dict[str, TaskInfo] = _build_tasks()


def task_info(task_id: str) -> TaskInfo:
    """The table row of ``task_id``; an unknown id fails with the list of known ids."""
    if task_id not in TASKS:
        raise ValueError(f"unknown task id {task_id!r}; known ids: {', '.join(TASKS)}")
    return TASKS[task_id]


def task_path(data_root: str | os.PathLike, task_id: str) -> Path:
    """The folder of ``task_id`` under ``data_root`` (``<data_root>/<TaskInfo.folder>``)."""
    return Path(data_root) / task_info(task_id).folder


# ---- layouts ------------------------------------------------------------------------------------

VTAB_LIST_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
FGVC_JSON_FILES = ("train.json", "val.json", "test.json")
CIFAR_FOLDER = "cifar-100-python"
CIFAR_FILES = ("train", "test", "meta")

_LAYOUT = (f"a task folder holding the list files {', '.join(VTAB_LIST_FILES)}, each line "
           "'images/<split>/<NNNNNN>.jpg <label>' with the image path relative to the task folder")
_FGVC_LAYOUT = (f"a task folder holding {', '.join(FGVC_JSON_FILES)}, each a JSON object mapping an image path "
                "(relative to the task's image root) to an integer class id")
_CIFAR_LAYOUT = (f"<task_dir>/{CIFAR_FOLDER}/{{{','.join(CIFAR_FILES)}}}: torchvision's CIFAR-100 pickles "
                 "(train/test: dicts with 'data' uint8 (N, 3072) and 'fine_labels' in [0, 100); "
                 "meta: 'fine_label_names')")
_SUITE_LAYOUT = {"vtab": _LAYOUT, "embedded": _LAYOUT, "fgvc": _FGVC_LAYOUT, "cifar": _CIFAR_LAYOUT}


def _fgvc_roots() -> str:
    rows = [t for t in TASKS.values() if t.suite == "fgvc"]
    return ", ".join(f"{t.folder}/ (images under {t.image_dir + '/' if t.image_dir else 'the folder itself'})"
                     for t in rows)


DATA_ROOT_LAYOUT = (
    "A data root holds one folder per task. VTAB-1k tasks live in vtab-1k/<name>/ (e.g. vtab-1k/dtd/) with "
    f"list files {', '.join(VTAB_LIST_FILES)} whose lines are 'images/<split>/<NNNNNN>.jpg <label>'. "
    f"FGVC tasks live in VPT's folders {_fgvc_roots()}; each holds {', '.join(FGVC_JSON_FILES)} mapping an "
    "image path, relative to that image root, to a class id. Full CIFAR-100 lives in "
    f"cifar100/{CIFAR_FOLDER}/{{{','.join(CIFAR_FILES)}}} (torchvision's pickles). The generated embedded "
    "tasks live in embedded/<name>/ in the VTAB-1k layout."
)


# ---- splits -------------------------------------------------------------------------------------

MODES = ("tuning", "final")
# suite -> mode -> (training split, evaluation split), spec §8 "Splits".
MODE_SPLITS: dict[str, dict[str, tuple[str, str]]] = {
    "vtab": {"tuning": ("train800", "val200"), "final": ("train800val200", "test")},
    "fgvc": {"tuning": ("train", "val"), "final": ("trainval", "test")},
    "cifar": {"tuning": ("train90", "val10"), "final": ("train", "test")},
}
MODE_SPLITS["embedded"] = MODE_SPLITS["vtab"]
# suite -> every split of its layout, derived ones included (trainval = train.json + val.json;
# train90 / val10 = a seeded partition of CIFAR-100's training set).
LAYOUT_SPLITS: dict[str, tuple[str, ...]] = {
    "vtab": ("train800", "val200", "train800val200", "test"),
    "fgvc": ("train", "val", "trainval", "test"),
    "cifar": ("train", "test", "train90", "val10"),
}
LAYOUT_SPLITS["embedded"] = LAYOUT_SPLITS["vtab"]
# Training splits that get FGVC's random crop + flip (spec §8); every other split is deterministic.
_FGVC_TRAIN_SPLITS = ("train", "trainval")

# [decision] CIFAR-100 tuning mode holds out round(10 %) of the training set, drawn by
# torch.randperm under this seed (same on every machine); val10 = that part, train90 = the rest.
CIFAR_VAL_SEED = 0
CIFAR_VAL_FRACTION = 0.1


def mode_splits(task_id: str, mode: str) -> tuple[str, str]:
    """(training split, evaluation split) of ``task_id`` in ``mode`` ('tuning' or 'final').

    VTAB-1k and embedded: tuning train800 -> val200, final train800val200 -> test. FGVC: tuning
    train -> val, final trainval -> test. CIFAR-100: tuning train90 -> val10, final train -> test.
    """
    info = task_info(task_id)
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {list(MODES)}")
    return MODE_SPLITS[info.suite][mode]


def task_splits(task_id: str) -> tuple[str, ...]:
    """Every split :func:`open_split` accepts for ``task_id`` (derived ones included)."""
    return LAYOUT_SPLITS[task_info(task_id).suite]


def augmented(task_id: str, split: str) -> bool:
    """Whether :func:`open_split` (with ``augment=None``) augments ``split``: FGVC training splits only.

    Only non-augmented splits give the same tensor on every read, so only they may be decoded once
    and cached in memory (:func:`load_tensors`).
    """
    return task_info(task_id).suite == "fgvc" and split in _FGVC_TRAIN_SPLITS


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


# ---- transforms ---------------------------------------------------------------------------------

_BICUBIC = transforms.InterpolationMode.BICUBIC


def eval_transform(img_size: int, normalize: bool = True) -> Callable:
    """VTAB transform of spec §8: bicubic resize to (img_size, img_size), ImageNet mean/std, no augmentation."""
    steps = [transforms.Resize((img_size, img_size), interpolation=_BICUBIC), transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return transforms.Compose(steps)


def fgvc_transform(img_size: int, train: bool) -> Callable:
    """FGVC transform of spec §8, scaled to ``img_size`` (224 -> resize 256).

    Bicubic resize of the shorter side to ``round(img_size * 256 / 224)``, then a random crop and
    horizontal flip (``train``) or a centre crop (eval) of ``img_size``; ImageNet mean/std.
    """
    steps = [transforms.Resize(round(img_size * 256 / 224), interpolation=_BICUBIC)]
    if train:
        steps += [transforms.RandomCrop(img_size), transforms.RandomHorizontalFlip()]
    else:
        steps.append(transforms.CenterCrop(img_size))
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return transforms.Compose(steps)


# ---- image helpers ------------------------------------------------------------------------------

def _load_rgb(path: Path) -> Image.Image:
    """Decode ``path`` as a 3-channel RGB image; any failure is an OSError naming the path."""
    try:
        with Image.open(path) as im:
            # convert() decodes; any mode (L, P, CMYK, RGBA, ...) becomes 3-channel RGB
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e}") from e


def _check_header(path: Path, where: str) -> None:
    """Open ``path`` and read its size (header only, no decode); OSError naming ``where`` and the path."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError) as e:  # UnidentifiedImageError (random bytes, empty file) is an OSError
        raise OSError(f"{where}: cannot read image {path}: {e}") from e
    if width < 1 or height < 1:
        raise OSError(f"{where}: image {path} has an empty size {width}x{height}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _require_task_dir(task_dir: Path, info: TaskInfo) -> None:
    if not task_dir.is_dir():
        raise FileNotFoundError(f"task folder {task_dir} for {info.task_id!r} does not exist; expected "
                                f"{_SUITE_LAYOUT[info.suite]}, found at <data_root>/{info.folder}/. "
                                f"{DATA_ROOT_LAYOUT}")


def _check_split(info: TaskInfo, split: str) -> None:
    valid = LAYOUT_SPLITS[info.suite]
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for task {info.task_id!r}; expected one of {list(valid)}")


# ---- VTAB-1k layout (vtab/*, embedded/*) --------------------------------------------------------

def _parse_list(list_file: Path, num_classes: int) -> tuple[list[Path], list[int], list[int]]:
    """Parse and check one VTAB list file: line format, label range, every image present.

    Returns (image paths, labels, line numbers).
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"missing VTAB list file {list_file}; expected {_LAYOUT}")
    paths, labels, linenos = [], [], []
    with open(list_file) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            # rsplit so the label is always the last field, even if a path had a space in it
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ValueError(f"{list_file}:{lineno}: malformed line {line.strip()!r}; expected "
                                 "'images/<split>/<NNNNNN>.jpg <label>'")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise ValueError(f"{list_file}:{lineno}: label {label} outside [0, {num_classes})")
            paths.append(list_file.parent / parts[0])
            labels.append(label)
            linenos.append(lineno)
    if not paths:
        raise ValueError(f"VTAB list file {list_file} has no entries; expected {_LAYOUT}")
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i = missing[0]
        raise FileNotFoundError(f"{list_file}:{linenos[i]}: listed image {paths[i]} does not exist "
                                f"({len(missing)} of {len(paths)} listed images missing; paths are relative "
                                "to the task folder)")
    return paths, labels, linenos


def _read_list(list_file: Path, num_classes: int) -> tuple[list[Path], list[int]]:
    """(image paths, labels) of one checked VTAB list file."""
    paths, labels, _ = _parse_list(list_file, num_classes)
    return paths, labels


class VtabFolder(torch.utils.data.Dataset):
    """One split of a task in the VTAB-1k layout (spec §8), checked eagerly at construction.

    ``root`` is the task folder, ``split`` a list-file stem (train800, val200, train800val200, test;
    the upstream set uses train and val). Items are ``(transform(RGB PIL image), int label)``.
    """

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int, transform: Callable):
        self.root = Path(root)
        self.split = split
        self.num_classes = num_classes
        self.transform = transform
        self.paths, self.labels = _read_list(self.root / f"{split}.txt", num_classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(_load_rgb(self.paths[i])), self.labels[i]


def _check_vtab(task_dir: Path, info: TaskInfo) -> tuple[dict[str, int], list[Path]]:
    counts, seen = {}, set()
    for split in LAYOUT_SPLITS[info.suite]:
        list_file = task_dir / f"{split}.txt"
        paths, _, linenos = _parse_list(list_file, info.num_classes)
        counts[split] = len(paths)
        for path, lineno in zip(paths, linenos, strict=True):
            if path not in seen:  # train800val200 repeats train800 and val200
                seen.add(path)
                _check_header(path, f"{list_file}:{lineno}")
    return counts, [task_dir / f for f in VTAB_LIST_FILES]


# ---- FGVC layout (fgvc/*, VPT's json files) -----------------------------------------------------

def _no_duplicate_keys(json_file: Path):
    def hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"{json_file}: key {key!r} appears twice; expected {_FGVC_LAYOUT}")
            obj[key] = value
        return obj

    return hook


def _read_fgvc_json(json_file: Path) -> dict[str, int]:
    """Parse and check one FGVC split file: a non-empty JSON object {relative image path: class id}.

    Class ids are integers (decimal strings are accepted and converted).
    """
    if not json_file.is_file():
        raise FileNotFoundError(f"missing FGVC split file {json_file}; expected {_FGVC_LAYOUT}")
    try:
        obj = json.loads(json_file.read_text(), object_pairs_hook=_no_duplicate_keys(json_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # JSONDecodeError names line and column
        raise ValueError(f"{json_file}: malformed JSON ({e}); expected {_FGVC_LAYOUT}") from e
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{json_file}: expected a non-empty JSON object mapping image path -> class id, got "
                         f"{type(obj).__name__} {str(obj)[:80]}")
    out = {}
    for key, cid in obj.items():
        if isinstance(cid, str) and cid.strip().lstrip("-").isdigit():
            cid = int(cid)
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(f"{json_file}: key {key!r}: class id {cid!r} is not an integer; expected {_FGVC_LAYOUT}")
        if not key or not _is_relative_inside(key):
            raise ValueError(f"{json_file}: key {key!r} is not a relative image path inside the image root")
        out[key] = cid
    return out


def _fgvc_index(task_dir: Path, num_classes: int) -> tuple[list[int], dict[str, dict[str, int]]]:
    """(sorted distinct class ids, {split: {image path: class id}}) of an FGVC task.

    Reads train.json, val.json and test.json together, so the id -> label remapping (position in the
    sorted ids) is the same for every split; ``trainval`` is train.json followed by val.json.
    """
    files = {Path(f).stem: _read_fgvc_json(task_dir / f) for f in FGVC_JSON_FILES}
    class_ids = sorted({cid for entries in files.values() for cid in entries.values()})
    if len(class_ids) != num_classes:
        raise ValueError(f"FGVC task folder {task_dir}: {len(class_ids)} distinct class ids across "
                         f"{', '.join(FGVC_JSON_FILES)} (ids {class_ids[0]}..{class_ids[-1]}), but the task "
                         f"table says {num_classes} classes; every class must appear in at least one file")
    trainval = dict(files["train"])
    for key, cid in files["val"].items():
        if trainval.get(key, cid) != cid:
            raise ValueError(f"{task_dir / 'val.json'}: key {key!r}: class id {cid} disagrees with "
                             f"train.json's {trainval[key]}")
        trainval[key] = cid
    files["trainval"] = trainval
    return class_ids, files


def _fgvc_source(task_dir: Path, split: str, key: str, files: dict[str, dict[str, int]]) -> Path:
    """The json file an entry of ``split`` comes from (trainval entries come from train or val)."""
    if split == "trainval":
        split = "train" if key in files["train"] else "val"
    return task_dir / f"{split}.json"


class FgvcJson(torch.utils.data.Dataset):
    """One split of an FGVC task in VPT's layout (spec §8), checked eagerly at construction.

    ``root`` is the task folder holding ``train.json``, ``val.json`` and ``test.json`` (each a JSON
    object: image path relative to ``<root>/<image_dir>`` -> class id). ``split`` is train, val, test
    or trainval (train.json then val.json). Class ids are remapped to ``0..C-1`` by their position among
    the sorted distinct ids of all three files, so every split agrees; ``class_ids[label]`` gives the
    original id back. Items are ``(transform(RGB PIL image), int label)``.
    """

    def __init__(self, root: str | os.PathLike, split: str, num_classes: int, transform: Callable,
                 image_dir: str = ""):
        if split not in LAYOUT_SPLITS["fgvc"]:
            raise ValueError(f"unknown FGVC split {split!r}; expected one of {list(LAYOUT_SPLITS['fgvc'])}")
        self.root = Path(root)
        self.image_root = self.root / image_dir
        self.split = split
        self.num_classes = num_classes
        self.transform = transform
        self.class_ids, files = _fgvc_index(self.root, num_classes)
        label_of = {cid: i for i, cid in enumerate(self.class_ids)}
        entries = files[split]
        self.keys = list(entries)
        self.paths = [self.image_root / key for key in self.keys]
        self.labels = [label_of[entries[key]] for key in self.keys]
        missing = [i for i, p in enumerate(self.paths) if not p.is_file()]
        if missing:
            key = self.keys[missing[0]]
            raise FileNotFoundError(f"{_fgvc_source(self.root, split, key, files)}: key {key!r}: listed image "
                                    f"{self.paths[missing[0]]} does not exist ({len(missing)} of {len(self.paths)} "
                                    f"listed images missing; paths are relative to the image root {self.image_root})")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(_load_rgb(self.paths[i])), self.labels[i]


def _check_fgvc(task_dir: Path, info: TaskInfo) -> tuple[dict[str, int], list[Path]]:
    _, files = _fgvc_index(task_dir, info.num_classes)
    image_root, seen = task_dir / info.image_dir, set()
    for split in ("train", "val", "test"):
        json_file = task_dir / f"{split}.json"
        for key in files[split]:
            path = image_root / key
            if path in seen:
                continue
            seen.add(path)
            if not path.is_file():
                raise FileNotFoundError(f"{json_file}: key {key!r}: listed image {path} does not exist (paths are "
                                        f"relative to the image root {image_root})")
            _check_header(path, f"{json_file}: key {key!r}")
    counts = {split: len(files[split]) for split in LAYOUT_SPLITS["fgvc"]}
    return counts, [task_dir / f for f in FGVC_JSON_FILES]


# ---- CIFAR-100 (torchvision's format) -----------------------------------------------------------

class Cifar100Folder(CIFAR100):
    """Full CIFAR-100 from a local copy in torchvision's format; never downloads.

    ``root`` is the task folder holding ``cifar-100-python/{train,test,meta}``; ``train`` picks the
    50,000-image training file or the 10,000-image test file. Items are torchvision's
    ``(transform(RGB PIL image), int fine label)``.

    torchvision's md5 check is replaced by a presence check (it would refuse any re-packed copy; the
    workflow records its own sha256 of the files) and a structure check: ``data`` uint8 (N, 3072)
    (N row-major CHW 32x32 images, kept as ``self.data`` (N, 32, 32, 3)), ``fine_labels`` N ints in
    [0, 100), meta with 100 ``fine_label_names``. Like torchvision this unpickles the files, so only
    point it at data you trust.
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
                             f"expected {_CIFAR_LAYOUT}")
        data, targets = np.asarray(entry["data"]), np.asarray(entry["fine_labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data):
            raise ValueError(f"{file}: 'data' must be uint8 of shape (N, 3072) with N > 0, got {data.dtype} "
                             f"{data.shape}; expected {_CIFAR_LAYOUT}")
        if targets.shape != (len(data),) or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"{file}: 'fine_labels' must be {len(data)} ints (one per image), got {targets.dtype} "
                             f"of shape {targets.shape}")
        bad = np.flatnonzero((targets < 0) | (targets >= 100))
        if len(bad):
            raise ValueError(f"{file}: fine_labels[{bad[0]}] = {targets[bad[0]]} outside [0, 100) "
                             f"({len(bad)} of {len(targets)} labels out of range)")
        self.data = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # HWC, as torchvision keeps it
        self.targets = targets.tolist()
        self._load_meta()

    def _unpickle(self, path: Path):
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, ImportError,
                UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a pickle in torchvision's CIFAR-100 format ({type(e).__name__}: {e}); "
                             f"expected {_CIFAR_LAYOUT}") from e

    def _check_integrity(self) -> bool:
        """Presence check in place of torchvision's md5 check; a missing file raises FileNotFoundError."""
        folder = Path(self.root) / self.base_folder
        if not folder.is_dir():
            raise FileNotFoundError(f"missing CIFAR-100 folder {folder}; expected {_CIFAR_LAYOUT}")
        for name in CIFAR_FILES:
            if not (folder / name).is_file():
                raise FileNotFoundError(f"missing CIFAR-100 file {folder / name}; expected {_CIFAR_LAYOUT}")
        return True

    def _load_meta(self) -> None:
        """Class names from ``meta`` (no md5 check)."""
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        meta = self._unpickle(path)
        names = meta.get(self.meta["key"]) if isinstance(meta, dict) else None
        if not isinstance(names, (list, tuple)) or len(names) != 100:
            raise ValueError(f"{path}: expected a dict whose {self.meta['key']!r} lists 100 class names; "
                             f"expected {_CIFAR_LAYOUT}")
        self.classes = list(names)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    def download(self) -> None:
        raise RuntimeError(f"Cifar100Folder never downloads; put the data at {Path(self.root) / self.base_folder}")


def _cifar_split(task_dir: Path, split: str, transform: Callable | None) -> torch.utils.data.Dataset:
    if split not in LAYOUT_SPLITS["cifar"]:
        raise ValueError(f"unknown CIFAR-100 split {split!r}; expected one of {list(LAYOUT_SPLITS['cifar'])}")
    ds = Cifar100Folder(task_dir, train=split != "test", transform=transform)
    if split in ("train", "test"):
        return ds
    train90, val10 = cifar_val_indices(len(ds))
    return torch.utils.data.Subset(ds, train90 if split == "train90" else val10)


def _check_cifar(task_dir: Path, info: TaskInfo) -> tuple[dict[str, int], list[Path]]:
    n_train = len(Cifar100Folder(task_dir, train=True))
    n_test = len(Cifar100Folder(task_dir, train=False))
    train90, val10 = cifar_val_indices(n_train)
    counts = {"train": n_train, "test": n_test, "train90": len(train90), "val10": len(val10)}
    return counts, [task_dir / CIFAR_FOLDER / f for f in CIFAR_FILES]


# ---- one API for every suite --------------------------------------------------------------------

def open_split(task_dir: str | os.PathLike, task_id: str, split: str, img_size: int,
               augment: bool | None = None) -> torch.utils.data.Dataset:
    """Split ``split`` of ``task_id`` stored in its own folder ``task_dir`` (``<data_root>/<TaskInfo.folder>``).

    Items are ``(float tensor (3, img_size, img_size), int label)`` for every suite:

    - vtab/*, embedded/*: :class:`VtabFolder` with :func:`eval_transform` (never augmented).
    - fgvc/*: :class:`FgvcJson` with :func:`fgvc_transform`; random crop + flip when augmenting.
    - cifar100: :class:`Cifar100Folder` resized to ``img_size``; train90 and val10 are
      ``torch.utils.data.Subset`` views of its training set (:func:`cifar_val_indices`).

    ``augment=None`` augments exactly when :func:`augmented` says so (FGVC train / trainval). Splits are
    those of :func:`task_splits`; see :func:`mode_splits` for which one each mode uses.
    """
    info = task_info(task_id)
    _check_split(info, split)
    task_dir = Path(task_dir)
    _require_task_dir(task_dir, info)
    if augment is None:
        augment = augmented(task_id, split)
    if info.suite in ("vtab", "embedded"):
        if augment:
            raise ValueError(f"task {task_id!r}: the VTAB-1k protocol has no augmentation (spec §8)")
        return VtabFolder(task_dir, split, info.num_classes, eval_transform(img_size))
    if info.suite == "fgvc":
        return FgvcJson(task_dir, split, info.num_classes, fgvc_transform(img_size, train=augment), info.image_dir)
    if info.suite == "cifar":
        if augment:
            raise ValueError(f"task {task_id!r}: the CIFAR-100 protocol has no augmentation")
        return _cifar_split(task_dir, split, eval_transform(img_size))
    raise ValueError(f"task {task_id!r}: no reader for suite {info.suite!r}")


def check_task(task_dir: str | os.PathLike, task_id: str) -> dict:
    """Validate every split of a task's layout before any training; describe it for a manifest.

    Checks, eagerly and without decoding images: the task folder and every list / json / pickle file
    exist and parse, every label is in range (FGVC: the number of distinct class ids equals the table's
    classes), every listed image exists and its header can be read. Any problem raises one error
    naming the path (and line or key) and the layout expected.

    Returns ``{"task", "suite", "num_classes", "splits": {split: n_examples}, "files": {relative path:
    {"bytes", "sha256"}}}``, ``splits`` covering every split of :func:`task_splits` (derived ones
    included) and ``files`` every list / json / pickle file (not the images).
    """
    info = task_info(task_id)
    task_dir = Path(task_dir)
    _require_task_dir(task_dir, info)
    checker = {"vtab": _check_vtab, "embedded": _check_vtab, "fgvc": _check_fgvc, "cifar": _check_cifar}
    counts, files = checker[info.suite](task_dir, info)
    return {
        "task": task_id,
        "suite": info.suite,
        "num_classes": info.num_classes,
        "splits": counts,
        "files": {f.relative_to(task_dir).as_posix(): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                  for f in files},
    }


def load_tensors(dataset: torch.utils.data.Dataset, batch_size: int = 256,
                 num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a whole (small, non-augmented) split once into memory: x (N, 3, H, W) float, y (N,) long.

    The embedded setting trains many epochs on 1000 images; decoding the JPEGs once saves most of
    the data time there. An augmented split (:func:`augmented`) must not be cached this way.
    """
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset!r} is empty")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = zip(*loader)
    return torch.cat(xs).float(), torch.cat(ys).long()


def write_vtab_task(out_dir: str | os.PathLike, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                    num_classes: int) -> Path:
    """Write a task in the VTAB-1k layout: ``images/<split>/<NNNNNN>.jpg`` (JPEG q95) and ``<split>.txt``.

    ``splits`` maps split name -> (uint8 images (N, H, W, 3), int labels (N,)). When both train800
    and val200 are given, ``train800val200.txt`` lists train800's lines then val200's. Everything is
    written to ``<out_dir>.tmp-<pid>`` and renamed into place, so an interrupted run never leaves a
    folder that looks complete. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    for split, (images, labels) in splits.items():
        images, labels = np.asarray(images), np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"split {split!r}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"split {split!r}: labels must be ints of shape ({len(images)},), "
                             f"got {labels.dtype} {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"split {split!r}: labels outside [0, {num_classes}): "
                             f"min {labels.min()}, max {labels.max()}")
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    lines = {}
    for split, (images, labels) in splits.items():
        (tmp / "images" / split).mkdir(parents=True)
        lines[split] = []
        for i, (img, label) in enumerate(zip(images, labels)):
            rel = f"images/{split}/{i:06d}.jpg"
            Image.fromarray(img).save(tmp / rel, quality=95)
            lines[split].append(f"{rel} {int(label)}\n")
    if "train800" in lines and "val200" in lines:
        lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, split_lines in lines.items():
        (tmp / f"{split}.txt").write_text("".join(split_lines))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
