"""The FGVC on-disk layout of VPT (spec §8), used by the five ``fgvc/*`` tasks.

A task folder holds ``train.json``, ``val.json`` and ``test.json``, each a JSON object mapping an
image path (relative to the task's image root, e.g. ``images/`` for CUB) to a class id. Ids are
remapped to ``0..C-1`` by their position among the sorted distinct ids of all three files, so every
split agrees. :class:`FgvcJson` reads one split (``trainval`` = train.json then val.json) and
:func:`check_fgvc` validates a whole task folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch

from esta.vit.data.files import check_header, load_rgb
from esta.vit.tasks import is_relative_inside

FGVC_SPLITS = ("train", "val", "trainval", "test")
# Training splits that get FGVC's random crop + flip (spec §8); every other split is deterministic.
FGVC_TRAIN_SPLITS = ("train", "trainval")
FGVC_JSON_FILES = ("train.json", "val.json", "test.json")
FGVC_LAYOUT = (f"a task folder holding {', '.join(FGVC_JSON_FILES)}, each a JSON object mapping an image path "
               "(relative to the task's image root) to an integer class id")


def _no_duplicate_keys(json_file: Path):
    def hook(pairs):
        obj = {}
        for key, value in pairs:
            if key in obj:
                raise ValueError(f"{json_file}: key {key!r} appears twice; expected {FGVC_LAYOUT}")
            obj[key] = value
        return obj

    return hook


def read_fgvc_json(json_file: Path) -> dict[str, int]:
    """Parse and check one FGVC split file: a non-empty JSON object {relative image path: class id}.

    Class ids are integers (decimal strings are accepted and converted).
    """
    if not json_file.is_file():
        raise FileNotFoundError(f"missing FGVC split file {json_file}; expected {FGVC_LAYOUT}")
    try:
        obj = json.loads(json_file.read_text(), object_pairs_hook=_no_duplicate_keys(json_file))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # JSONDecodeError names line and column
        raise ValueError(f"{json_file}: malformed JSON ({e}); expected {FGVC_LAYOUT}") from e
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{json_file}: expected a non-empty JSON object mapping image path -> class id, got "
                         f"{type(obj).__name__} {str(obj)[:80]}")
    out = {}
    for key, cid in obj.items():
        if isinstance(cid, str) and cid.strip().lstrip("-").isdigit():
            cid = int(cid)
        if isinstance(cid, bool) or not isinstance(cid, int):
            raise ValueError(f"{json_file}: key {key!r}: class id {cid!r} is not an integer; expected {FGVC_LAYOUT}")
        if not key or not is_relative_inside(key):
            raise ValueError(f"{json_file}: key {key!r} is not a relative image path inside the image root")
        out[key] = cid
    return out


def fgvc_index(task_dir: Path, num_classes: int) -> tuple[list[int], dict[str, dict[str, int]]]:
    """(sorted distinct class ids, {split: {image path: class id}}) of an FGVC task.

    Reads train.json, val.json and test.json together, so the id -> label remapping (position in the
    sorted ids) is the same for every split; ``trainval`` is train.json followed by val.json.
    """
    files = {Path(f).stem: read_fgvc_json(task_dir / f) for f in FGVC_JSON_FILES}
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
        if split not in FGVC_SPLITS:
            raise ValueError(f"unknown FGVC split {split!r}; expected one of {list(FGVC_SPLITS)}")
        self.root = Path(root)
        self.image_root = self.root / image_dir
        self.split = split
        self.num_classes = num_classes
        self.transform = transform
        self.class_ids, files = fgvc_index(self.root, num_classes)
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
        return self.transform(load_rgb(self.paths[i])), self.labels[i]


def check_fgvc(task_dir: Path, num_classes: int, image_dir: str) -> tuple[dict[str, int], list[Path]]:
    """Check the three json files of an FGVC task folder and every listed image's header.

    Returns ({split: n_examples} for every split of :data:`FGVC_SPLITS`, the json files).
    """
    _, files = fgvc_index(task_dir, num_classes)
    image_root, seen = task_dir / image_dir, set()
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
            check_header(path, f"{json_file}: key {key!r}")
    counts = {split: len(files[split]) for split in FGVC_SPLITS}
    return counts, [task_dir / f for f in FGVC_JSON_FILES]
