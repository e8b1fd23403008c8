"""A user's own data sets as tasks ``custom/<name>`` (spec §13), declared in the config::

    datasets:
      mine: {source: imagefolder, path: /data/mine}        # optional: group, val_frac, transform
      other: {source: hf, path: /data/other, image_key: img, label_key: target}
    tasks: [custom/mine, custom/other]

``imagefolder`` is ``esta.vit.data.imagefolder`` (``<root>/<split>/<class>/<image>``), ``hf`` is
``esta.vit.data.hf`` (parquet or ``save_to_disk`` folders of Hugging Face ``datasets``). Both are checked
whole by ``register_data`` (:func:`describe_custom`), which writes the manifest every later job reads:
root, class names, split sizes, where the selection split came from, skipped files, and sizes and
sha256 of the data.

Splits follow spec §8's protocol: tuning mode trains on ``train`` and selects on ``val``; final mode
trains on ``trainval`` (= train + val) and reports ``test``. Without a selection split in the data,
``val`` is a seeded fraction ``val_frac`` of the training split (drawn like CIFAR-100's, recorded in the
manifest) and ``train`` the rest. Images are transformed as VTAB's (``transform: vtab``, resize to S x S,
no augmentation; the default) or as FGVC's (``transform: fgvc``: resize + random crop and flip in training,
centre crop otherwise).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from esta.vit.data.hf import HfSplit, check_hf, load_hf
from esta.vit.data.imagefolder import ImageFolderSplit, check_imagefolder
from esta.vit.fingerprint import fingerprint  # torch-free: the DAG build imports it
from esta.vit.data.transforms import eval_transform, fgvc_transform
from esta.vit.tasks import DEFAULT_GROUP

__all__ = ["SOURCES", "CUSTOM_SPLITS", "CUSTOM_MODE_SPLITS", "CUSTOM_TRANSFORMS", "VAL_SEED", "CustomDataset",
           "held_out", "describe_custom", "open_custom", "fingerprint"]

SOURCES = ("imagefolder", "hf")
CUSTOM_SPLITS = ("train", "val", "trainval", "test")
CUSTOM_MODE_SPLITS = {"tuning": ("train", "val"), "final": ("trainval", "test")}
CUSTOM_TRANSFORMS = ("vtab", "fgvc")
VAL_SEED = 0  # [decision] the held-out selection split is drawn under a fixed seed, as CIFAR-100's


@dataclass(frozen=True)
class CustomDataset:
    """One entry of config ``datasets``; the defaults are those of the schema's descriptions."""

    source: str
    path: str
    group: str = DEFAULT_GROUP  # the row of the group tables (accuracy_by_group)
    val_frac: float = 0.1  # share of the training split held out for selection when there is no val split
    image_key: str = "image"  # hf only
    label_key: str = "label"  # hf only
    transform: str = "vtab"

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"data set source {self.source!r} is not one of {list(SOURCES)}")
        if not 0 < self.val_frac < 1:
            raise ValueError(f"val_frac must be in (0, 1), got {self.val_frac}")
        if self.transform not in CUSTOM_TRANSFORMS:
            raise ValueError(f"transform {self.transform!r} is not one of {list(CUSTOM_TRANSFORMS)}")
        if self.source == "imagefolder" and (self.image_key, self.label_key) != ("image", "label"):
            raise ValueError("image_key and label_key are columns of an hf data set; an imagefolder has none")

    @classmethod
    def from_config(cls, name: str, entry: dict) -> "CustomDataset":
        """The entry ``datasets.<name>``; an unknown or missing key is an error naming it."""
        known = {f.name for f in fields(cls)}
        if not isinstance(entry, dict) or set(entry) - known or not {"source", "path"} <= set(entry):
            raise ValueError(f"datasets.{name} = {entry!r}: expected keys source and path, optionally "
                             f"{sorted(known - {'source', 'path'})}")
        try:
            return cls(**entry)
        except ValueError as err:
            raise ValueError(f"datasets.{name}: {err}") from None


def held_out(n: int, frac: float, seed: int = VAL_SEED) -> tuple[list[int], list[int]]:
    """(train, val) indices into a training split of ``n`` items, each sorted: ``round(frac * n)``
    drawn by ``torch.randperm`` under ``seed`` are val, the rest train; both non-empty."""
    n_val = round(frac * n)
    if not 0 < n_val < n:
        raise ValueError(f"cannot hold out val_frac {frac} of a training split of {n} examples for selection "
                         f"({n_val} would be held out); add a val split or change val_frac")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def describe_custom(task: str, dataset: CustomDataset) -> dict:
    """Check the data set behind ``task`` whole (every image decoded, every label checked) and return
    its manifest: ``task, source, root, num_classes, classes, transform, splits {train, val, trainval,
    test}, parts {role: {name, count} or None}, selection, files`` plus ``skipped`` (imagefolder) or
    ``image_key`` / ``label_key`` (hf)."""
    root = Path(dataset.path).expanduser().resolve()
    if dataset.source == "imagefolder":
        d = check_imagefolder(root)
        names, extra = d["split_dirs"], dict(skipped=d["skipped"])
    else:
        d = check_hf(root, dataset.image_key, dataset.label_key)
        names, extra = d["split_names"], dict(image_key=dataset.image_key, label_key=dataset.label_key)
    counts = d["counts"]
    n_train, n_test = counts["train"], counts["test"]
    if names["val"] is not None:
        selection = dict(source="val", name=names["val"])
        splits = dict(train=n_train, val=counts["val"], trainval=n_train + counts["val"], test=n_test)
    else:
        train, val = held_out(n_train, dataset.val_frac)
        selection = dict(source="train", name=names["train"], val_frac=dataset.val_frac, seed=VAL_SEED)
        splits = dict(train=len(train), val=len(val), trainval=n_train, test=n_test)
    parts = {role: None if name is None else dict(name=name, count=counts[role]) for role, name in names.items()}
    return dict(task=task, source=dataset.source, root=str(root), num_classes=len(d["classes"]),
                classes=d["classes"], transform=dataset.transform, splits=splits, parts=parts,
                selection=selection, files=d["files"], **extra)


def _part(m: dict, role: str, transform, hf_splits=None):
    part = m["parts"][role]
    if m["source"] == "imagefolder":
        return ImageFolderSplit(Path(m["root"]) / part["name"], m["classes"], part["count"], transform)
    return HfSplit(hf_splits[part["name"]], m["image_key"], m["label_key"], transform)


def open_custom(m: dict, split: str, img_size: int, augment: bool | None, mean_std,
                interpolation: str = "bicubic") -> tuple[torch.utils.data.Dataset, bool]:
    """Split ``split`` of the custom task a manifest describes, and whether it is randomly augmented
    (``augment=None``: FGVC's transform augments train and trainval; VTAB's never)."""
    if split not in CUSTOM_SPLITS:
        raise ValueError(f"unknown split {split!r} for task {m['task']!r}; expected one of {list(CUSTOM_SPLITS)}")
    training = split in ("train", "trainval")
    augment = m["transform"] == "fgvc" and training if augment is None else augment
    if m["transform"] == "fgvc":
        transform = fgvc_transform(img_size, train=augment, mean_std=mean_std, interpolation=interpolation)
    elif augment:
        raise ValueError(f"task {m['task']!r}: transform 'vtab' has no augmentation (use transform: fgvc)")
    else:
        transform = eval_transform(img_size, mean_std=mean_std)
    hf_splits = load_hf(m["root"]) if m["source"] == "hf" else None
    role = "test" if split == "test" else "train" if split != "val" or m["selection"]["source"] == "train" else "val"
    ds = _part(m, role, transform, hf_splits)
    if m["selection"]["source"] == "train" and split in ("train", "val"):
        train, val = held_out(len(ds), m["selection"]["val_frac"], m["selection"]["seed"])
        ds = torch.utils.data.Subset(ds, train if split == "train" else val)
    elif m["selection"]["source"] == "val" and split == "trainval":
        ds = torch.utils.data.ConcatDataset([ds, _part(m, "val", transform, hf_splits)])
    if len(ds) != m["splits"][split]:
        raise ValueError(f"task {m['task']!r} split {split!r}: {len(ds)} examples, the manifest says "
                         f"{m['splits'][split]}; {m['root']} changed since it was registered: rerun register_data")
    return ds, augment
