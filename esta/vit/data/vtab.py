"""The VTAB-1k on-disk layout (spec §8), used by ``vtab/*`` tasks and the generated ``embedded/*`` suite.

A task folder holds one list file per split, ``<split>.txt``, whose lines are
``images/<split>/<NNNNNN>.jpg <label>`` with the image path relative to the task folder.
:class:`VtabFolder` reads one split, :func:`check_vtab` validates a whole task folder, and
:func:`write_vtab_task` is the one writer of the layout (embedded tasks, the upstream set, tests).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from esta.vit.data.files import check_header, load_rgb

VTAB_SPLITS = ("train800", "val200", "train800val200", "test")
VTAB_LIST_FILES = tuple(f"{split}.txt" for split in VTAB_SPLITS)
VTAB_LAYOUT = (f"a task folder holding the list files {', '.join(VTAB_LIST_FILES)}, each line "
               "'images/<split>/<NNNNNN>.jpg <label>' with the image path relative to the task folder")


def parse_list(list_file: Path, num_classes: int) -> tuple[list[Path], list[int], list[int]]:
    """Parse and check one VTAB list file: line format, label range, every image present.

    Returns (image paths, labels, line numbers).
    """
    if not list_file.is_file():
        raise FileNotFoundError(f"missing VTAB list file {list_file}; expected {VTAB_LAYOUT}")
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
        raise ValueError(f"VTAB list file {list_file} has no entries; expected {VTAB_LAYOUT}")
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        i = missing[0]
        raise FileNotFoundError(f"{list_file}:{linenos[i]}: listed image {paths[i]} does not exist "
                                f"({len(missing)} of {len(paths)} listed images missing; paths are relative "
                                "to the task folder)")
    return paths, labels, linenos


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
        self.paths, self.labels, _ = parse_list(self.root / f"{split}.txt", num_classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[i])), self.labels[i]


def check_vtab(task_dir: Path, num_classes: int) -> tuple[dict[str, int], list[Path]]:
    """Check every list file of a VTAB-1k task folder and every listed image's header.

    Returns ({split: n_examples}, the list files).
    """
    counts, seen = {}, set()
    for split in VTAB_SPLITS:
        list_file = task_dir / f"{split}.txt"
        paths, _, linenos = parse_list(list_file, num_classes)
        counts[split] = len(paths)
        for path, lineno in zip(paths, linenos, strict=True):
            if path not in seen:  # train800val200 repeats train800 and val200
                seen.add(path)
                check_header(path, f"{list_file}:{lineno}")
    return counts, [task_dir / f for f in VTAB_LIST_FILES]


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
