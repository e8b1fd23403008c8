"""Datasets and task table (ESTA spec §8): canonical task ids, on-disk layouts, splits and transforms.

The paper's 25 tasks come in three on-disk formats, plus the generated embedded suite, one module
per format behind the one :func:`open_split` API:

- **VTAB-1k** (``vtab/*``, 19 tasks) and **embedded** (``embedded/*``): list files ``<split>.txt``
  of ``images/<split>/<NNNNNN>.jpg <label>`` lines (:mod:`esta.vit.data.vtab`, :class:`VtabFolder`).
- **FGVC** (``fgvc/*``, 5 tasks): VPT's ``train.json``, ``val.json``, ``test.json`` mapping an image
  path to a class id, remapped to ``0..C-1`` by sorting (:mod:`esta.vit.data.fgvc`, :class:`FgvcJson`).
- **CIFAR-100** (``cifar100``): torchvision's pickles in ``cifar-100-python/``
  (:mod:`esta.vit.data.cifar`, :class:`Cifar100Folder`).
- **a user's data** (``custom/<name>``, spec §13): an image folder or a Hugging Face ``datasets`` folder
  declared in config ``datasets`` (:mod:`esta.vit.data.custom`); opened from its manifest
  (``esta.vit.build.open_task``).

This module holds what is shared by every suite:

- ``TASKS`` / :func:`task_info`: the one table of tasks (classes, VTAB group, folder under the data
  root), defined in :mod:`esta.vit.tasks` (no torch) and re-exported. Ids are prefixed by suite, so
  ``vtab/oxford_flowers102`` and ``fgvc/oxford_flowers`` differ.
- :func:`mode_splits`: (training split, evaluation split) of a task in ``tuning`` mode (selects
  stitches) or ``final`` mode (produces the reported numbers), spec §8 "Splits".
- the transforms (:mod:`esta.vit.data.transforms`, re-exported): :func:`eval_transform` (VTAB,
  CIFAR), :func:`fgvc_transform`, and the two choices the workflow records with its results,
  :func:`normalization` (config ``data.normalize``) and the FGVC resize interpolation
  (``data.fgvc_interpolation``), see :func:`describe_transform`.
- :func:`open_split`: one split of any task as a dataset of ``(float (3, S, S), int label)``.
- :func:`check_task`: validates a task's whole layout before any training and describes it (split
  sizes, sha256 of list files) for the workflow's manifest.
- :func:`load_tensors`: decode a small deterministic split once into memory.

Nothing here downloads anything: a missing folder or file fails with its path and the layout expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from esta.runtime import file_digest
from esta.vit.data.cifar import (CIFAR_FILES, CIFAR_FOLDER, CIFAR_LAYOUT, CIFAR_SPLITS, CIFAR_VAL_FRACTION,
                                 CIFAR_VAL_SEED, Cifar100Folder, check_cifar, cifar_split, cifar_val_indices)
from esta.vit.data.fgvc import FGVC_JSON_FILES, FGVC_LAYOUT, FGVC_SPLITS, FGVC_TRAIN_SPLITS, FgvcJson, check_fgvc
from esta.vit.data.transforms import (FGVC_INTERPOLATIONS, IMAGENET_MEAN_STD, NORMALIZE, describe_transform,
                                      eval_transform, fgvc_transform, interpolation_mode, normalization)
from esta.vit.data.vtab import VTAB_LAYOUT, VTAB_LIST_FILES, VTAB_SPLITS, VtabFolder, check_vtab, write_vtab_task
from esta.vit.data.custom import CUSTOM_MODE_SPLITS, CUSTOM_SPLITS
from esta.vit.tasks import GROUPS, TASKS, TaskInfo, is_custom, task_info, task_path

__all__ = [
    "GROUPS", "TaskInfo", "TASKS", "task_info", "task_path", "DATA_ROOT_LAYOUT",
    "MODES", "MODE_SPLITS", "LAYOUT_SPLITS", "mode_splits", "task_splits", "augmented",
    "NORMALIZE", "FGVC_INTERPOLATIONS", "IMAGENET_MEAN_STD", "normalization", "describe_transform",
    "eval_transform", "fgvc_transform", "open_split", "check_task", "load_tensors",
    # re-exported from the format modules
    "VTAB_LIST_FILES", "VtabFolder", "write_vtab_task", "FGVC_JSON_FILES", "FgvcJson",
    "CIFAR_FOLDER", "CIFAR_FILES", "CIFAR_VAL_SEED", "CIFAR_VAL_FRACTION", "Cifar100Folder", "cifar_val_indices",
    "CUSTOM_SPLITS", "is_custom",
]

# ---- layouts ------------------------------------------------------------------------------------

_SUITE_LAYOUT = {"vtab": VTAB_LAYOUT, "embedded": VTAB_LAYOUT, "fgvc": FGVC_LAYOUT, "cifar": CIFAR_LAYOUT}


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


def _require_task_dir(task_dir: Path, info: TaskInfo) -> None:
    if not task_dir.is_dir():
        raise FileNotFoundError(f"task folder {task_dir} for {info.task_id!r} does not exist; expected "
                                f"{_SUITE_LAYOUT[info.suite]}, found at <data_root>/{info.folder}/. "
                                f"{DATA_ROOT_LAYOUT}")


# ---- splits -------------------------------------------------------------------------------------

MODES = ("tuning", "final")
# suite -> mode -> (training split, evaluation split), spec §8 "Splits".
MODE_SPLITS: dict[str, dict[str, tuple[str, str]]] = {
    "vtab": {"tuning": ("train800", "val200"), "final": ("train800val200", "test")},
    "fgvc": {"tuning": ("train", "val"), "final": ("trainval", "test")},
    "cifar": {"tuning": ("train90", "val10"), "final": ("train", "test")},
}
MODE_SPLITS["embedded"] = MODE_SPLITS["vtab"]
MODE_SPLITS["custom"] = CUSTOM_MODE_SPLITS  # custom/<name>: train -> val, trainval -> test (spec §13)
# suite -> every split of its layout, derived ones included (trainval = train.json + val.json;
# train90 / val10 = a seeded partition of CIFAR-100's training set).
LAYOUT_SPLITS: dict[str, tuple[str, ...]] = {"vtab": VTAB_SPLITS, "fgvc": FGVC_SPLITS, "cifar": CIFAR_SPLITS}
LAYOUT_SPLITS["embedded"] = LAYOUT_SPLITS["vtab"]
LAYOUT_SPLITS["custom"] = CUSTOM_SPLITS


def mode_splits(task_id: str, mode: str) -> tuple[str, str]:
    """(training split, evaluation split) of ``task_id`` in ``mode`` ('tuning' or 'final').

    VTAB-1k and embedded: tuning train800 -> val200, final train800val200 -> test. FGVC and custom
    tasks: tuning train -> val, final trainval -> test. CIFAR-100: tuning train90 -> val10, final
    train -> test.
    """
    suite = "custom" if is_custom(task_id) else task_info(task_id).suite
    if mode not in MODES:
        raise ValueError(f"unknown split mode {mode!r}; expected one of {list(MODES)}")
    return MODE_SPLITS[suite][mode]


def task_splits(task_id: str) -> tuple[str, ...]:
    """Every split :func:`open_split` (``esta.vit.build.open_task`` for custom tasks) accepts for ``task_id``
    (derived ones included)."""
    return LAYOUT_SPLITS["custom" if is_custom(task_id) else task_info(task_id).suite]


def augmented(task_id: str, split: str) -> bool:
    """Whether :func:`open_split` (with ``augment=None``) augments ``split``: FGVC training splits only.

    Only non-augmented splits give the same tensor on every read, so only they may be decoded once
    and cached in memory (:func:`load_tensors`).
    """
    return task_info(task_id).suite == "fgvc" and split in FGVC_TRAIN_SPLITS


def _check_split(info: TaskInfo, split: str) -> None:
    valid = LAYOUT_SPLITS[info.suite]
    if split not in valid:
        raise ValueError(f"unknown split {split!r} for task {info.task_id!r}; expected one of {list(valid)}")


# ---- one API for every suite --------------------------------------------------------------------

def open_split(task_dir: str | os.PathLike, task_id: str, split: str, img_size: int,
               augment: bool | None = None, normalize: str = "imagenet", family: str | None = None,
               fgvc_interpolation: str = "bicubic") -> torch.utils.data.Dataset:
    """Split ``split`` of ``task_id`` stored in its own folder ``task_dir`` (``<data_root>/<TaskInfo.folder>``).

    Items are ``(float tensor (3, img_size, img_size), int label)`` for every suite:

    - vtab/*, embedded/*: :class:`VtabFolder` with :func:`eval_transform` (never augmented).
    - fgvc/*: :class:`FgvcJson` with :func:`fgvc_transform`; random crop + flip when augmenting,
      resized with ``fgvc_interpolation`` (config ``data.fgvc_interpolation``).
    - cifar100: :class:`Cifar100Folder` resized to ``img_size``; train90 and val10 are
      ``torch.utils.data.Subset`` views of its training set (:func:`cifar_val_indices`).

    Every suite is normalised by :func:`normalization` of ``normalize`` (config ``data.normalize``)
    and, for ``anchor``, the anchor ``family``. ``augment=None`` augments exactly when
    :func:`augmented` says so (FGVC train / trainval). Splits are those of :func:`task_splits`; see
    :func:`mode_splits` for which one each mode uses.
    """
    info = task_info(task_id)
    _check_split(info, split)
    mean_std = normalization(normalize, family)
    interpolation_mode(fgvc_interpolation)  # a bad value fails for every suite, not only when an FGVC task runs
    task_dir = Path(task_dir)
    _require_task_dir(task_dir, info)
    if augment is None:
        augment = augmented(task_id, split)
    if info.suite in ("vtab", "embedded"):
        if augment:
            raise ValueError(f"task {task_id!r}: the VTAB-1k protocol has no augmentation (spec §8)")
        return VtabFolder(task_dir, split, info.num_classes, eval_transform(img_size, mean_std=mean_std))
    if info.suite == "fgvc":
        transform = fgvc_transform(img_size, train=augment, mean_std=mean_std, interpolation=fgvc_interpolation)
        return FgvcJson(task_dir, split, info.num_classes, transform, info.image_dir)
    if info.suite == "cifar":
        if augment:
            raise ValueError(f"task {task_id!r}: the CIFAR-100 protocol has no augmentation")
        return cifar_split(task_dir, split, eval_transform(img_size, mean_std=mean_std))
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
    if info.suite in ("vtab", "embedded"):
        counts, files = check_vtab(task_dir, info.num_classes)
    elif info.suite == "fgvc":
        counts, files = check_fgvc(task_dir, info.num_classes, info.image_dir)
    else:
        counts, files = check_cifar(task_dir)
    return {
        "task": task_id,
        "suite": info.suite,
        "num_classes": info.num_classes,
        "splits": counts,
        "files": {f.relative_to(task_dir).as_posix(): {"bytes": f.stat().st_size, "sha256": file_digest(f)}
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
