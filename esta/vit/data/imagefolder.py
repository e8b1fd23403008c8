"""A user's image folder as a task (spec §13): torchvision's / timm's ``ImageFolder`` convention.

Layout ``<root>/<split>/<class>/<image>`` (images may sit in sub-folders of their class folder, as
torchvision walks them). Split folders are found by timm's names (``timm.data.dataset_factory``):
``train`` / ``training`` for training, ``val`` / ``valid`` / ``validation`` / ``eval`` / ``evaluation``
for selection and ``test`` for the reported test set; training and test are required, a missing
selection split is drawn from training by ``esta.vit.data.custom``. Classes are the class folders'
names, sorted; every split must hold the same classes, none empty.

Hidden files and folders (name starting with ``.``), files whose extension is not one of
torchvision's image extensions, and files lying directly in a split folder are skipped and counted.
Symbolic links are followed (:func:`walk`); a link back to a folder above it (a cycle) is an error
naming the link.
:func:`check_imagefolder` reads and fully decodes every image once (a truncated file fails there,
naming it, before any training) and hashes it; images of any PIL mode and size are accepted and
become RGB when read (:class:`ImageFolderSplit`).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from esta.vit.data.files import load_rgb
from esta.vit.fingerprint import walk  # torch-free: the DAG build fingerprints folders with it

__all__ = ["SPLIT_NAMES", "IMAGEFOLDER_LAYOUT", "walk", "find_splits", "split_roles", "scan_split", "read_image", "check_imagefolder",
           "ImageFolderSplit"]

# role -> folder names, timm's synonyms (dataset_factory._TRAIN_SYNONYM / _EVAL_SYNONYM) plus test
SPLIT_NAMES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation", "eval", "evaluation"),
    "test": ("test",),
}
IMAGEFOLDER_LAYOUT = (
    "<root>/<split>/<class>/<image>: split folders train (or training), test, and optionally val (or valid, "
    "validation, eval, evaluation); one folder per class, the same classes in every split; images with "
    f"extensions {', '.join(IMG_EXTENSIONS)}"
)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_splits(root: Path) -> dict[str, str | None]:
    """``{role: folder name}`` of the train, val and test folders under ``root`` (val None when absent).
    A missing root, training or test folder, or two folders for one role, is an error naming the path."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; expected {IMAGEFOLDER_LAYOUT}")
    return split_roles({p.name for p in root.iterdir() if p.is_dir()}, SPLIT_NAMES, f"image folder {root}",
                       IMAGEFOLDER_LAYOUT, prefix=f"{root}/")


def split_roles(available: set[str], names_by_role: dict[str, tuple[str, ...]], where: str,
                layout: str, prefix: str = "") -> dict[str, str | None]:
    """``{role: split name}`` of the train, val and test splits among the ``available`` names (val None
    when absent), by timm's split names; a missing train or test split, or two names for one role, is
    an error naming ``where``, the names looked for (each behind ``prefix``, e.g. the folder's path)
    and the ``layout`` expected."""
    found = {}
    for role, names in names_by_role.items():
        present = [n for n in names if n in available]
        if len(present) > 1:
            raise ValueError(f"{where}: {' and '.join(present)} are both {role} splits; keep one")
        if not present and role != "val":
            looked = ", ".join(prefix + n for n in names)
            raise FileNotFoundError(f"{where}: missing {role} split (one of {looked}); found {sorted(available)}; "
                                    f"expected {layout}")
        found[role] = present[0] if present else None
    return found


def scan_split(split_dir: Path) -> tuple[list[str], list[Path], list[int], dict[str, int]]:
    """(sorted class names, image paths, labels, skipped counts) of one split folder, in a fixed order:
    by class, then by path. Skipped: ``hidden`` files and folders, ``non_image`` files, ``unfiled``
    files directly in the split folder. An empty class is an error naming its folder."""
    skipped = dict(hidden=0, non_image=0, unfiled=0)
    classes = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if _hidden(entry.name):
            skipped["hidden"] += 1
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            skipped["unfiled"] += 1
    if not classes:
        raise ValueError(f"split folder {split_dir} holds no class folders; expected {IMAGEFOLDER_LAYOUT}")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for here, dirs, files in walk(split_dir / name):
            skipped["hidden"] += sum(_hidden(d) for d in dirs) + sum(_hidden(f) for f in files)
            dirs[:] = [d for d in dirs if not _hidden(d)]  # walk visible sub-folders (in name order)
            for f in (f for f in files if not _hidden(f)):
                if has_file_allowed_extension(f, IMG_EXTENSIONS):
                    found.append(Path(here) / f)
                else:
                    skipped["non_image"] += 1
        if not found:
            raise ValueError(f"class folder {split_dir / name} holds no image (extensions "
                             f"{', '.join(IMG_EXTENSIONS)}): an empty class; remove the folder from every split or "
                             "add images")
        paths += sorted(found)
        labels += [label] * len(found)
    return classes, paths, labels, skipped


def read_image(data: bytes, where: str) -> tuple[int, int]:
    """Decode image bytes completely (a truncated or corrupt file fails here); its (width, height).
    The error names ``where`` (a file, or a record of a data set)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
        raise OSError(f"cannot read image {where}: {err}") from err
    if width < 1 or height < 1:
        raise OSError(f"image {where} has an empty size {width}x{height}")
    return width, height


def check_imagefolder(root: str | os.PathLike) -> dict:
    """Check a whole image folder before any training and describe it for a manifest.

    Returns ``{"classes", "split_dirs": {role: folder or None}, "counts": {role: images}, "skipped":
    {role: {"hidden", "non_image", "unfiled"}}, "files": {folder: {"images", "bytes", "sha256"}}}``,
    the sha256 of a split being that of its lines ``<path relative to root>\\t<sha256 of the file>``.
    Every image is read and decoded once.
    """
    root = Path(root)
    dirs = find_splits(root)
    classes, counts, skipped, files = None, {}, {}, {}
    for role, folder in dirs.items():
        if folder is None:
            continue
        names, paths, _, skipped[role] = scan_split(root / folder)
        if classes is None:
            classes, first = names, folder
        elif names != classes:
            only_here, only_first = sorted(set(names) - set(classes)), sorted(set(classes) - set(names))
            name, where, missing = ((only_here[0], root / folder, root / first) if only_here
                                    else (only_first[0], root / first, root / folder))
            raise ValueError(f"class folder {where / name} has no counterpart {missing / name}: every split must "
                             f"hold the same classes ({len(classes)} in {first}, {len(names)} in {folder})")
        digest, total = hashlib.sha256(), 0
        for path in paths:
            data = path.read_bytes()
            read_image(data, str(path))
            total += len(data)
            digest.update(f"{path.relative_to(root).as_posix()}\t{hashlib.sha256(data).hexdigest()}\n".encode())
        counts[role] = len(paths)
        files[folder] = dict(images=len(paths), bytes=total, sha256=digest.hexdigest())
    return dict(classes=classes, split_dirs=dirs, counts=counts, skipped=skipped, files=files)


class ImageFolderSplit(torch.utils.data.Dataset):
    """One split folder: items ``(transform(RGB PIL image), int label)``. ``classes`` (the manifest's)
    must be the folder's and ``count`` its number of images, else the folder changed since it was
    registered and the error says so."""

    def __init__(self, split_dir: str | os.PathLike, classes: list[str], count: int, transform: Callable):
        self.split_dir = Path(split_dir)
        names, self.paths, self.labels, _ = scan_split(self.split_dir)
        if names != list(classes) or len(self.paths) != count:
            raise ValueError(f"image folder {self.split_dir} changed since it was registered ({len(names)} classes, "
                             f"{len(self.paths)} images; the manifest says {len(classes)} and {count}): rerun "
                             "register_data")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[i])), self.labels[i]
