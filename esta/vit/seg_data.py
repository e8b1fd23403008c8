"""Segmentation data in ADE20K's on-disk layout (ADEChallengeData2016; spec §14), and the embedded
dense task rendered in it.

Layout: ``images/{training,validation}/<name>.jpg`` and ``annotations/{training,validation}/<name>.png``,
one single-channel uint8 class index per pixel. Under ``reduce_zero_label`` (ADE20K's 150 classes) index 0
is "other" and is ignored, and index ``c`` is class ``c - 1``; 255 is ignored always. Ignored pixels
become ``esta.vit.seg.IGNORE`` in the masks this module yields.

Splits [decision]: ``train`` and ``selection`` are a seeded partition of ``training`` (the selection
split is what ``evaluate``-type deployment scores see), ``test`` is ``validation``. Images and masks are
resized to (S, S) (bilinear / nearest) and mIoU is computed at that size [decision: mmseg evaluates at
the original resolution by sliding windows; at 64 px the two coincide for the embedded task]. Training
adds a random resized crop (scale 0.5-1) and a horizontal flip applied to image and mask alike
(torchvision ``transforms.v2`` with ``tv_tensors.Mask``, which resizes masks by nearest neighbour).

:func:`check_ade20k` validates a whole folder before any work (one error naming the file);
:func:`write_dense_task` renders the embedded task (shapes and textured regions with known masks).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from esta.vit.tasks import DENSE_TASKS, dense_task

__all__ = ["ADE_SPLITS", "ADE_LAYOUT", "SEG_SPLITS", "check_ade20k", "SegFolder", "split_indices",
           "write_dense_task", "DENSE_CLASSES", "DENSE_TASKS",
           "dense_task", "class_names", "open_dense"]

ADE_SPLITS = ("training", "validation")
ADE_LAYOUT = ("a folder holding images/{training,validation}/<name>.jpg and annotations/{training,validation}/"
              "<name>.png (one single-channel uint8 class index per pixel; 0 = other under reduce_zero_label, "
              "255 = ignored)")
SEG_SPLITS = {"train": "training", "selection": "training", "test": "validation"}
_IGNORED = 255
_SINGLE_CHANNEL = ("L", "P")


def _pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"missing folder {d}; expected {ADE_LAYOUT}")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise ValueError(f"{img_dir} holds no image; expected {ADE_LAYOUT}")
    pairs = [(p, ann_dir / f"{p.stem}.png") for p in images]
    missing = [a for _, a in pairs if not a.is_file()]
    if missing:
        raise FileNotFoundError(f"missing annotation {missing[0]} ({len(missing)} of {len(pairs)} images of "
                                f"{split} have none); expected {ADE_LAYOUT}")
    return pairs


def check_ade20k(root: str | os.PathLike, num_classes: int, reduce_zero_label: bool) -> dict:
    """Check every image/annotation pair of both splits and describe the folder for a manifest.

    Refused, naming the file: a missing annotation, an annotation that is not single-channel (PIL mode
    L or P), an image and annotation of different sizes, a label >= classes (> classes under
    ``reduce_zero_label``) other than 255. Returns split sizes and per-class pixel counts."""
    from esta.vit.data.files import check_header

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation data folder not found: {root}; expected {ADE_LAYOUT}")
    top = num_classes if reduce_zero_label else num_classes - 1
    sizes, pixels = {}, np.zeros(num_classes, dtype=np.int64)
    for split in ADE_SPLITS:
        pairs = _pairs(root, split)
        for img, ann in pairs:
            check_header(img, f"{split} image")
            with Image.open(ann) as a:
                if a.mode not in _SINGLE_CHANNEL:
                    raise ValueError(f"annotation {ann} has mode {a.mode}; expected one uint8 class index per "
                                     "pixel (PIL mode L or P)")
                labels = np.asarray(a)
            with Image.open(img) as i:
                if i.size != (labels.shape[1], labels.shape[0]):
                    raise ValueError(f"annotation {ann} is {labels.shape[1]}x{labels.shape[0]} but its image {img} "
                                     f"is {i.size[0]}x{i.size[1]}")
            bad = labels[(labels > top) & (labels != _IGNORED)]
            if bad.size:
                raise ValueError(f"annotation {ann} holds label {int(bad.max())} but the task has {num_classes} "
                                 f"classes (labels 0..{top}{' with 0 = other' if reduce_zero_label else ''}, "
                                 "255 ignored)")
            valid = _reduce(labels, reduce_zero_label)
            pixels += np.bincount(valid[valid >= 0], minlength=num_classes)
        sizes[split] = len(pairs)
    return dict(splits=sizes, class_pixels=pixels.tolist())


def _reduce(labels: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """uint8 annotation -> int64 class map with ``esta.vit.seg.IGNORE`` on ignored pixels."""
    from esta.vit.seg import IGNORE

    out = labels.astype(np.int64) - (1 if reduce_zero_label else 0)
    out[(labels == _IGNORED) | (out < 0)] = IGNORE
    return out


def split_indices(n: int, fraction: float, seed: int) -> dict[str, list[int]]:
    """A seeded partition of ``n`` training pairs into ``train`` and ``selection`` (at least one each)."""
    if n < 2:
        raise ValueError(f"the training split needs >= 2 images to hold out a selection split, has {n}")
    k = min(n - 1, max(1, round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return dict(selection=sorted(perm[:k]), train=sorted(perm[k:]))


class SegFolder(torch.utils.data.Dataset):
    """Split ``split`` (train, selection, test) of a folder in ADE20K's layout as (image (3, S, S) float,
    mask (S, S) int64) pairs; ``augment`` adds the training crop and flip (default: on for ``train``)."""

    def __init__(self, root: str | os.PathLike, split: str, img_size: int, reduce_zero_label: bool,
                 mean_std, selection_fraction: float = 0.1, split_seed: int = 0, augment: bool | None = None):
        from torchvision.transforms import v2

        if split not in SEG_SPLITS:
            raise ValueError(f"unknown segmentation split {split!r}; expected one of {list(SEG_SPLITS)}")
        pairs = _pairs(Path(root), SEG_SPLITS[split])
        if split != "test":
            pairs = [pairs[i] for i in split_indices(len(pairs), selection_fraction, split_seed)[split]]
        self.pairs, self.reduce_zero_label = pairs, reduce_zero_label
        self.augment = split == "train" if augment is None else augment
        size = (img_size, img_size)
        resize = (v2.RandomResizedCrop(size, scale=(0.5, 1.0), antialias=True) if self.augment
                  else v2.Resize(size, antialias=True))
        steps = [resize, v2.RandomHorizontalFlip()] if self.augment else [resize]
        self.geometry = v2.Compose(steps)
        self.finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(*mean_std)])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        img_path, ann_path = self.pairs[i]
        with Image.open(img_path) as im:
            img = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        with Image.open(ann_path) as a:
            labels = torch.from_numpy(_reduce(np.asarray(a), self.reduce_zero_label))  # (H, W)
        img, mask = self.geometry(tv_tensors.Image(img), tv_tensors.Mask(labels))
        return self.finish(img).as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Dense tasks: the table is esta.vit.tasks.DENSE_TASKS (no torch: the workflow reads it when it plans)

def class_names(name: str) -> list[str]:
    """Column-safe class names of a dense task (ADE20K's by index: its names hold spaces and commas)."""
    return list(DENSE_CLASSES) if name == "shapes" else [f"c{i:03d}" for i in range(dense_task(name)["num_classes"])]


# ---------------------------------------------------------------------------------------------
# The embedded dense task: procedural scenes with known masks (ADE20K layout, reduce_zero_label)

# Stored labels 1..8 (0 = "other", ignored under reduce_zero_label): two backgrounds, six objects.
DENSE_CLASSES = ("sky", "grass", "disk", "square", "triangle", "ring", "stripes", "checker")


def _scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W, 3) uint8 and its annotation (H, W) uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    horizon = rng.uniform(0.3, 0.7)
    sky = yy < horizon + 0.1 * np.sin(6 * xx + rng.uniform(0, 6))
    ann = np.where(sky, 1, 2).astype(np.uint8)
    img = np.empty((size, size, 3), np.float32)
    img[sky] = np.array([0.4, 0.6, 0.9]) + 0.2 * yy[sky, None]
    grass = 0.35 + 0.25 * rng.random((size, size))  # high-frequency texture
    img[~sky] = np.stack([0.3 * grass, grass, 0.2 * grass], -1)[~sky]
    for _ in range(rng.integers(2, 5)):
        cls = int(rng.integers(3, 9))
        cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.22)
        dx, dy = xx - cx, yy - cy
        shape = {3: dx**2 + dy**2 < r**2,
                 4: (abs(dx) < r) & (abs(dy) < r),
                 5: (dy > -r) & (abs(dx) < (dy + r) / 2),
                 6: (dx**2 + dy**2 < r**2) & (dx**2 + dy**2 > (0.55 * r) ** 2),
                 7: (abs(dx) < 1.3 * r) & (abs(dy) < 0.8 * r),
                 8: (dx / 1.3) ** 2 + dy**2 < r**2}[cls]
        colour = rng.uniform(0.1, 0.9, 3)
        if cls == 7:  # stripes: the texture, not the colour, tells the class
            colour = colour * (0.5 + 0.5 * (np.sin(40 * (xx + yy)) > 0))[..., None]
        elif cls == 8:
            colour = colour * (0.5 + 0.5 * ((np.floor(xx * size / 4) + np.floor(yy * size / 4)) % 2))[..., None]
        else:
            colour = np.broadcast_to(colour, (size, size, 3))
        img[shape] = colour[shape]
        ann[shape] = cls
    other = (xx - rng.uniform()) ** 2 + (yy - rng.uniform()) ** 2 < 0.004  # a small unlabelled blob
    img[other] = rng.random((int(other.sum()), 3))
    ann[other] = 0
    img = np.clip(img + 0.04 * rng.standard_normal(img.shape), 0, 1)
    return (img * 255).astype(np.uint8), ann


def write_dense_task(out: str | os.PathLike, n_train: int, n_val: int, size: int, seed: int) -> dict:
    """Render the embedded dense task into ``out`` in ADE20K's layout (JPEG images, PNG annotations);
    deterministic in ``seed``. Returns the number of images per split."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, n in (("training", n_train), ("validation", n_val)):
        for d in ("images", "annotations"):
            (out / d / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img, ann = _scene(rng, size)
            Image.fromarray(img).save(out / "images" / split / f"{i:06d}.jpg", quality=95)
            Image.fromarray(ann, mode="L").save(out / "annotations" / split / f"{i:06d}.png")
    return dict(training=n_train, validation=n_val)


# ---------------------------------------------------------------------------------------------
# What the dense jobs open (config slice ``dense``)

_IN_MEMORY_BYTES = 1 << 30  # a deterministic split that fits in 1 GiB as float32 is decoded once


def open_dense(manifest: dict, split: str, dense: dict, family, augment: bool | None = None):
    """Split ``split`` (train, selection, test) of a registered dense task at ``dense.img_size``,
    normalised as ``dense.normalize`` says; the train/selection partition is seeded by
    ``dense.split_seed`` (the same for every training seed). Deterministic splits that fit in memory
    come back as a ``TensorDataset``."""
    from torch.utils.data import TensorDataset

    from esta.vit.data.transforms import normalization

    ds = SegFolder(manifest["root"], split, dense["img_size"], manifest["reduce_zero_label"],
                   normalization(dense["normalize"], family), dense["selection_fraction"], dense["split_seed"],
                   augment)
    if not ds.augment and len(ds) * 3 * dense["img_size"] ** 2 * 4 <= _IN_MEMORY_BYTES:
        items = [ds[i] for i in range(len(ds))]
        return TensorDataset(torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]))
    return ds
