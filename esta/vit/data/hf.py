"""A Hugging Face ``datasets`` image data set on disk as a task (spec §13).

Two on-disk forms, both read with the ``datasets`` library, never downloaded (``HF_DATASETS_OFFLINE=1``):

- a folder of parquet files whose names give the split (``train.parquet``,
  ``test-00000-of-00001.parquet``, ``data/validation-*.parquet``), read by
  ``load_dataset("parquet", data_dir=path)``;
- a ``save_to_disk`` folder, read by ``load_from_disk``: of a ``DatasetDict`` (``dataset_dict.json``)
  or one such folder per split (``path/train/``, ``path/test/``). ``load_dataset`` cannot read these.

Columns ``image_key`` (an ``Image`` feature) and ``label_key`` (a ``ClassLabel``, which carries the
class names) are configurable (defaults ``image`` / ``label``). Splits are matched by name: ``train`` /
``training``; ``validation`` / ``val`` / ``valid`` / ``dev`` / ``eval``; ``test`` / ``testing``
(``datasets`` already names parquet splits train / validation / test). :func:`check_hf` decodes every
image and checks every label before any training; any problem names the path, split, column and row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from esta.runtime import file_digest
from esta.vit.data.imagefolder import read_image, split_roles

__all__ = ["HF_SPLIT_NAMES", "HF_LAYOUT", "load_hf", "find_hf_splits", "check_hf", "HfSplit"]

HF_SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("validation", "val", "valid", "dev", "eval", "evaluation"),
    "test": ("test", "testing"),
}
HF_LAYOUT = (
    "a folder of parquet files named by split (train.parquet, test-00000-of-00001.parquet, ...), as "
    "load_dataset('parquet', data_dir=path) reads it, or a save_to_disk folder (load_from_disk) of a DatasetDict "
    "or of one Dataset per split (path/train/, path/test/); splits train and test, optionally validation; an "
    "Image column and a ClassLabel column"
)


def _is_saved(folder: Path) -> bool:
    return (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()


def load_hf(path: str | os.PathLike):
    """The ``DatasetDict`` stored at ``path`` (any of the forms of this module's docstring)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: nothing is ever downloaded
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"Hugging Face data set folder {path} does not exist; expected {HF_LAYOUT}")
    if (path / "dataset_dict.json").is_file():
        return load_from_disk(str(path))
    if _is_saved(path):
        raise ValueError(f"{path} holds one saved Dataset without splits; save a DatasetDict (train, test) or "
                         f"one folder per split; expected {HF_LAYOUT}")
    per_split = sorted(d for d in path.iterdir() if d.is_dir() and _is_saved(d))
    if per_split:
        return DatasetDict({d.name: load_from_disk(str(d)) for d in per_split})
    if not any(path.rglob("*.parquet")):
        raise FileNotFoundError(f"{path} holds neither parquet files nor a save_to_disk folder; expected {HF_LAYOUT}")
    return load_dataset("parquet", data_dir=str(path))


def find_hf_splits(splits, path: Path) -> dict[str, str | None]:
    """``{role: split name}`` of the train, val and test splits (val None when absent); a missing
    train or test split, or two splits for one role, is an error naming the path and the splits found."""
    return split_roles(set(splits), HF_SPLIT_NAMES, str(path), HF_LAYOUT)


def _class_names(ds, split: str, label_key: str, path: Path) -> list[str]:
    from datasets import ClassLabel

    feature = ds.features[label_key]
    if not isinstance(feature, ClassLabel):
        raise ValueError(f"{path}: split {split!r} column {label_key!r} is {feature}, not a ClassLabel, so its class "
                         f"names are unknown; cast it (ds.cast_column({label_key!r}, ClassLabel(names=[...]))) and "
                         "save the data set again")
    return list(feature.names)


def _columns(ds, split: str, keys: tuple[str, str], path: Path) -> None:
    from datasets import Image as ImageFeature

    for key, what in zip(keys, ("image_key", "label_key")):
        if key not in ds.column_names:
            raise ValueError(f"{path}: split {split!r} has no column {key!r} ({what}); its columns are "
                             f"{ds.column_names}")
    if not isinstance(ds.features[keys[0]], ImageFeature):
        raise ValueError(f"{path}: split {split!r} column {keys[0]!r} (image_key) is {ds.features[keys[0]]}, not an "
                         "Image feature")


def check_hf(path: str | os.PathLike, image_key: str = "image", label_key: str = "label") -> dict:
    """Check a whole data set before any training and describe it for a manifest.

    Every split must have both columns and the same ``ClassLabel`` names; every label must index
    them; every class must occur in the training split; every image must decode. Returns
    ``{"classes", "split_names": {role: split or None}, "counts": {role: rows}, "files": {relative
    path: {"bytes", "sha256"}}}`` (the data files and their json descriptions).
    """
    from datasets import Image as ImageFeature

    path = Path(path)
    dd = load_hf(path)
    names = find_hf_splits(list(dd), path)
    classes, counts = None, {}
    for role, split in names.items():
        if split is None:
            continue
        ds = dd[split]
        _columns(ds, split, (image_key, label_key), path)
        own = _class_names(ds, split, label_key, path)
        if classes is None:
            classes, first = own, split
        elif own != classes:
            extra = sorted(set(own) ^ set(classes))
            raise ValueError(f"{path}: split {split!r} has classes {own} but split {first!r} has {classes} "
                             f"(differing: {extra}); every split needs the same ClassLabel names")
        labels = ds[label_key]
        bad = [i for i, y in enumerate(labels) if y is None or not 0 <= y < len(classes)]
        if bad:
            raise ValueError(f"{path}: split {split!r} row {bad[0]} column {label_key!r} = {labels[bad[0]]}, outside "
                             f"the {len(classes)} classes {classes} ({len(bad)} of {len(labels)} rows)")
        if role == "train":
            seen = set(labels)
            empty = [c for i, c in enumerate(classes) if i not in seen]
            if empty:
                raise ValueError(f"{path}: class {empty[0]!r} has no example in split {split!r} (an empty class; "
                                 f"{len(empty)} of {len(classes)} classes empty)")
        raw = ds.select_columns([image_key]).cast_column(image_key, ImageFeature(decode=False))
        for i, item in enumerate(raw):
            image = item[image_key]
            where = f"{path} split {split!r} row {i} column {image_key!r}"
            if image is None or (image.get("bytes") is None and image.get("path") is None):
                raise OSError(f"cannot read image {where}: no image stored")
            data = image["bytes"] if image.get("bytes") is not None else Path(image["path"]).read_bytes()
            read_image(data, where)
        counts[role] = len(ds)
    data_files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in (".parquet", ".arrow", ".json"))
    files = {f.relative_to(path).as_posix(): dict(bytes=f.stat().st_size, sha256=file_digest(f)) for f in data_files}
    return dict(classes=classes, split_names=names, counts=counts, files=files)


class HfSplit(torch.utils.data.Dataset):
    """One split of a ``datasets`` data set: items ``(transform(RGB PIL image), int label)``."""

    def __init__(self, ds, image_key: str, label_key: str, transform: Callable):
        self.ds = ds.select_columns([image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self.ds[int(i)]
        return self.transform(row[self.image_key].convert("RGB")), int(row[self.label_key])
