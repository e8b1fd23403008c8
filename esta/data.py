"""Datasets and task table (ESTA spec §8): canonical task ids, VTAB-1k splits and on-disk layout.

- ``TASKS`` is the one table of tasks in code: the 19 VTAB-1k tasks, the 5 FGVC tasks, full
  CIFAR-100 (our 25th task) and the embedded suite of ``esta/embedded.py``. Ids are prefixed by
  suite, so ``vtab/oxford_flowers102`` and ``fgvc/oxford_flowers`` are different tasks.
- ``SPLITS``: tuning mode (train800 -> val200) selects stitches; final mode
  (train800val200 -> test) produces the reported numbers (spec §8, "Splits").
- ``VtabFolder`` reads the VTAB-1k layout: a task folder with ``<split>.txt`` list files whose
  lines are ``images/<split>/<NNNNNN>.jpg <label>``; it checks the whole split before any training.
- ``write_vtab_task`` is the one writer of that layout (embedded tasks, test fixtures).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms

GROUPS = ("Natural", "Specialized", "Structured", "FGVC")


@dataclass(frozen=True)
class TaskInfo:
    """One row of the task table: canonical id, suite, name inside the suite, classes, VTAB group."""

    task_id: str
    suite: str
    name: str
    num_classes: int
    group: str

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"task {self.task_id!r}: num_classes must be an int >= 2, got {self.num_classes!r}")
        if self.group not in GROUPS:
            raise ValueError(f"task {self.task_id!r}: group {self.group!r} is not one of {GROUPS}")
        if not self.suite or not self.name or "/" in self.name:
            raise ValueError(f"task {self.task_id!r}: bad suite {self.suite!r} or name {self.name!r}")


# (name, classes) per VTAB-1k group, exactly as spec §8.
_VTAB = {
    "Natural": [("cifar", 100), ("caltech101", 102), ("dtd", 47), ("oxford_flowers102", 102),
                ("oxford_iiit_pet", 37), ("svhn", 10), ("sun397", 397)],
    "Specialized": [("patch_camelyon", 2), ("eurosat", 10), ("resisc45", 45), ("diabetic_retinopathy", 5)],
    "Structured": [("clevr_count", 8), ("clevr_dist", 6), ("dmlab", 6), ("kitti", 4), ("dsprites_loc", 16),
                   ("dsprites_ori", 16), ("smallnorb_azi", 18), ("smallnorb_ele", 9)],
}
_FGVC = [("cub", 200), ("nabirds", 555), ("oxford_flowers", 102), ("stanford_dogs", 120), ("stanford_cars", 196)]
# The embedded suite (32x32 images generated offline by esta/embedded.py, which holds only the
# generators keyed by these names). Defined here so the table stays one table and data.py never
# imports embedded.py (embedded.py imports this module for write_vtab_task).
_EMBEDDED = [("digits", "Natural", 10), ("mnist", "Natural", 10), ("textures", "Natural", 10),
             ("medical", "Specialized", 5),
             ("count", "Structured", 6), ("sprite_loc", "Structured", 16), ("sprite_ori", "Structured", 8)]


def _build_tasks() -> dict[str, TaskInfo]:
    rows = [TaskInfo(f"vtab/{n}", "vtab", n, c, g) for g, items in _VTAB.items() for n, c in items]
    rows += [TaskInfo(f"fgvc/{n}", "fgvc", n, c, "FGVC") for n, c in _FGVC]
    rows.append(TaskInfo("cifar100", "cifar", "cifar100", 100, "Natural"))
    rows += [TaskInfo(f"embedded/{n}", "embedded", n, c, g) for n, g, c in _EMBEDDED]
    return {r.task_id: r for r in rows}


TASKS: dict[str, TaskInfo] = _build_tasks()


def task_info(task_id: str) -> TaskInfo:
    """The table row of ``task_id``; an unknown id fails with the list of known ids."""
    if task_id not in TASKS:
        raise ValueError(f"unknown task id {task_id!r}; known ids: {', '.join(TASKS)}")
    return TASKS[task_id]


# mode -> (training split, evaluation split) for VTAB-layout tasks (spec §8).
SPLITS = {"tuning": ("train800", "val200"), "final": ("train800val200", "test")}
VTAB_LIST_FILES = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
_LAYOUT = (f"a task folder holding the list files {', '.join(VTAB_LIST_FILES)}, each line "
           "'images/<split>/<NNNNNN>.jpg <label>' with the image path relative to the task folder")


def split_files(mode: str) -> tuple[str, str]:
    """(train split name, eval split name) of ``mode`` ('tuning' or 'final')."""
    if mode not in SPLITS:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {sorted(SPLITS)}")
    return SPLITS[mode]


def _read_list(list_file: Path, num_classes: int) -> tuple[list[Path], list[int]]:
    """Parse and check one VTAB list file: line format, label range, every image present."""
    if not list_file.is_file():
        raise FileNotFoundError(f"missing VTAB list file {list_file}; expected {_LAYOUT}")
    paths, labels = [], []
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
    if not paths:
        raise ValueError(f"VTAB list file {list_file} has no entries; expected {_LAYOUT}")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"image {missing[0]} listed in {list_file} does not exist "
                                f"({len(missing)} of {len(paths)} listed images missing)")
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
        path = self.paths[i]
        try:
            with Image.open(path) as im:
                # convert() decodes; any mode (L, P, CMYK, RGBA, ...) becomes 3-channel RGB
                img = im.convert("RGB")
        except (OSError, ValueError) as e:
            raise OSError(f"cannot read image {path}: {e}") from e
        return self.transform(img), self.labels[i]


def eval_transform(img_size: int, normalize: bool = True) -> Callable:
    """VTAB transform of spec §8: bicubic resize to (img_size, img_size), ImageNet mean/std, no augmentation."""
    steps = [transforms.Resize((img_size, img_size), interpolation=transforms.InterpolationMode.BICUBIC),
             transforms.ToTensor()]
    if normalize:
        steps.append(transforms.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return transforms.Compose(steps)


def load_tensors(dataset: torch.utils.data.Dataset, batch_size: int = 256,
                 num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a whole (small) split once into memory: x (N, 3, H, W) float, y (N,) long.

    The embedded setting trains many epochs on 1000 images; decoding the JPEGs once saves most of
    the data time there.
    """
    if len(dataset) == 0:
        raise ValueError(f"dataset {dataset!r} is empty")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    xs, ys = zip(*loader)
    return torch.cat(xs).float(), torch.cat(ys).long()


def open_split(root: str | os.PathLike, task_id: str, split: str, img_size: int) -> VtabFolder:
    """Split ``split`` of a VTAB-layout task stored at ``<root>/<suite>/<name>/``, with eval_transform."""
    info = task_info(task_id)
    if info.suite not in ("vtab", "embedded"):
        raise ValueError(f"task {task_id!r} (suite {info.suite!r}) is not stored in the VTAB-1k layout; "
                         "open_split reads only vtab/* and embedded/* tasks")
    return VtabFolder(Path(root) / info.suite / info.name, split, info.num_classes, eval_transform(img_size))


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
