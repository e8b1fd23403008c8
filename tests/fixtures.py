"""Writers of tiny datasets and weights in the real on-disk formats (plain functions, not pytest fixtures).

Each writer is deterministic given its seed, needs no network, and lays its output out exactly as
``esta.vit.data.DATA_ROOT_LAYOUT`` describes, so tests (and the workflow tests) can point the code at a
``data_root`` that looks like a real one:

- :func:`write_vtab_fixture`: VTAB-1k tasks with images of mixed PIL modes and sizes.
- :func:`write_fgvc_fixture`: an FGVC task in VPT's layout, 1-based non-contiguous class ids.
- :func:`write_cifar100_fixture`: CIFAR-100 pickles in torchvision's format.
- :func:`write_vit_weights`: random-init timm ViTs saved as IN-21K-style ``.safetensors`` files.
- :func:`write_imagefolder_fixture`: a user's ``<root>/<split>/<class>/<image>`` tree (spec §13), mixed
  modes and sizes, with hidden and non-image files to skip.
- :func:`write_hf_fixture`: a Hugging Face ``datasets`` image data set as parquet files or ``save_to_disk``
  folders (spec §13).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from esta.vit.data import CIFAR_FOLDER, task_info, task_path

# (PIL mode, file suffix) cycled over fixture images: JPEG holds L, RGB and CMYK; a palette image needs PNG.
_MODES = (("RGB", ".jpg"), ("L", ".jpg"), ("CMYK", ".jpg"), ("P", ".png"))
_SIZES = ((20, 30), (64, 48), (33, 33))  # (width, height)


def _image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Image.Image:
    """A smooth-ish random RGB image (blocks of colour, so JPEG keeps it) converted to ``mode``."""
    w, h = size
    blocks = rng.integers(0, 256, (max(h // 4, 1), max(w // 4, 1), 3), dtype=np.uint8)
    rgb = Image.fromarray(blocks).resize((w, h), Image.NEAREST)
    return rgb.convert(mode)


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, quality=90)
    else:
        img.save(path)


def write_vtab_fixture(data_root: str | os.PathLike, names=("dtd", "eurosat"), n=(8, 4, 6), seed=0) -> list[Path]:
    """Write VTAB-1k tasks ``vtab/<name>`` under ``<data_root>/vtab-1k/<name>/``; return their folders.

    ``n`` = (train800, val200, test) sizes. Images ``images/<split>/<NNNNNN>.<jpg|png>`` cycle through
    PIL modes RGB, L, CMYK (JPEG) and P (PNG) and sizes 20x30, 64x48, 33x33; labels are drawn within
    the task's classes. ``train800val200.txt`` lists train800's lines then val200's.
    """
    rng = np.random.default_rng(seed)
    folders = []
    for name in names:
        info = task_info(f"vtab/{name}")
        folder = task_path(data_root, info.task_id)
        lines, k = {}, 0
        for split, count in zip(("train800", "val200", "test"), n, strict=True):
            lines[split] = []
            for i in range(count):
                mode, suffix = _MODES[k % len(_MODES)]
                size = _SIZES[k % len(_SIZES)]
                k += 1
                rel = f"images/{split}/{i:06d}{suffix}"
                _save(_image(rng, mode, size), folder / rel)
                lines[split].append(f"{rel} {int(rng.integers(info.num_classes))}\n")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, split_lines in lines.items():
            (folder / f"{split}.txt").write_text("".join(split_lines))
        folders.append(folder)
    return folders


def fgvc_class_ids(num_classes: int, seed: int = 0) -> list[int]:
    """The sorted class ids :func:`write_fgvc_fixture` uses: 1-based, non-contiguous, 1 to 3 digits.

    Always contains 1 and ids of different digit counts, so sorting them as strings would differ.
    """
    rng = np.random.default_rng([seed, num_classes])
    rest = rng.choice(np.arange(2, 3 * num_classes + 2), num_classes - 1, replace=False)
    return sorted([1, *(int(i) for i in rest)])


def write_fgvc_fixture(data_root: str | os.PathLike, name="oxford_flowers", seed=0, n_val=6, n_test=8) -> Path:
    """Write FGVC task ``fgvc/<name>`` in VPT's layout under ``<data_root>/<TaskInfo.folder>``; return the folder.

    ``train.json`` holds one image per class; ``val.json`` and ``test.json`` a few more. Class ids are
    :func:`fgvc_class_ids` (1-based, non-contiguous), in shuffled order in every file; together the
    three files hold exactly the table's number of distinct ids. Image paths are nested
    (``<id>.class_<id>/<split>_<NNNNN>.jpg``) under the task's image root, with mixed modes and
    small sizes (12x12, 16x10, 9x14).
    """
    info = task_info(f"fgvc/{name}")
    rng = np.random.default_rng(seed)
    folder = task_path(data_root, info.task_id)
    image_root = folder / info.image_dir
    ids = fgvc_class_ids(info.num_classes, seed)
    per_split = {
        "train": rng.permutation(ids),
        "val": rng.choice(ids, n_val, replace=False),
        "test": rng.choice(ids, n_test, replace=False),
    }
    sizes = ((12, 12), (16, 10), (9, 14))
    k = 0
    for split, split_ids in per_split.items():
        entries = {}
        for j, cid in enumerate(split_ids):
            rel = f"{int(cid):03d}.class_{int(cid)}/{split}_{j:05d}.jpg"
            mode = _MODES[k % 3][0]  # RGB, L, CMYK: all JPEG-able
            _save(_image(rng, mode, sizes[k % len(sizes)]), image_root / rel)
            entries[rel] = int(cid)
            k += 1
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{split}.json").write_text(json.dumps(entries))
    return folder


def write_cifar100_fixture(data_root: str | os.PathLike, n_train=200, n_test=50, seed=0) -> Path:
    """Write ``<data_root>/cifar100/cifar-100-python/{train,test,meta}`` in torchvision's format; return
    the task folder (``<data_root>/cifar100``).

    ``train`` / ``test`` are dicts with ``data`` uint8 (N, 3072) (row-major CHW), ``fine_labels``,
    ``coarse_labels``, ``filenames`` and ``batch_label``; ``meta`` holds 100 ``fine_label_names`` and
    20 ``coarse_label_names``. Pickled with protocol 2, like the original's Python 2 pickles.
    Training labels cycle over all 100 classes (shuffled).
    """
    rng = np.random.default_rng(seed)
    folder = task_path(data_root, "cifar100")
    out = folder / CIFAR_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.permutation(np.resize(np.arange(100), n))
        entry = {
            "filenames": [f"fixture_{split}_{i:05d}.png" for i in range(n)],
            "batch_label": f"{split}ing batch 1 of 1",
            "fine_labels": [int(c) for c in fine],
            "coarse_labels": [int(c) // 5 for c in fine],
            "data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
        }
        with open(out / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)]}
    with open(out / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return folder


def write_vit_weights(out_dir: str | os.PathLike, num_classes=21843,
                      names=("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"),
                      seed=0) -> list[Path]:
    """Save random-init timm ViTs as ``<out_dir>/<name>.augreg_in21k.safetensors``; return the files.

    Each file is ``model.state_dict()`` of ``timm.create_model(name, pretrained=False,
    num_classes=num_classes)`` (timm's key names, an IN-21K-sized head by default), so it loads like a
    real checkpoint with ``create_model(f"{name}.augreg_in21k", pretrained=True, num_classes=...,
    pretrained_cfg_overlay=dict(file=path, num_classes=num_classes))``. The global torch RNG is
    seeded inside a fork, so callers' random state is untouched. ViT-B with 21,843 classes is ~400 MB.
    """
    import timm
    import torch
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)  # timm initialises from the global generator
            model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        path = out_dir / f"{name}.augreg_in21k.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        paths.append(path)
        del model
    return paths


# (PIL mode, suffix) of a user's images: every mode PIL converts to RGB, in the formats that hold it
_USER_MODES = (("RGB", ".jpg"), ("L", ".png"), ("RGBA", ".png"), ("P", ".png"), ("CMYK", ".jpg"), ("LA", ".png"),
               ("1", ".bmp"), ("I;16", ".tif"), ("RGB", ".webp"))
_USER_SIZES = ((20, 30), (64, 48), (33, 33), (17, 90), (40, 12))


def _pick(k: int) -> tuple[str, tuple[int, int]]:
    return _USER_MODES[k % len(_USER_MODES)][0], _USER_SIZES[k % len(_USER_SIZES)]


def write_imagefolder_fixture(root: str | os.PathLike, classes=("cat", "dog", "eel"), n=(6, 3, 4),
                              splits=("training", "val", "test"), seed=0) -> Path:
    """Write ``<root>/<split>/<class>/<image>`` and return ``root``; ``n`` images per class and split
    (in ``splits`` order; a split named ``None`` is left out). Images cycle through PIL modes (RGB, L,
    RGBA, P, CMYK, LA, 1, I;16) in JPEG, PNG, BMP, TIFF and WebP files and through sizes; one image per
    class sits in a sub-folder. Every split also gets a hidden file, a hidden folder with an image in it,
    a ``notes.txt`` in each class folder and a ``README`` beside the class folders (all to be skipped)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    k = 0
    for split, count in zip(splits, n, strict=True):
        if split is None:
            continue
        for c in classes:
            for i in range(count):
                mode, size = _pick(k)
                suffix = _USER_MODES[k % len(_USER_MODES)][1]
                sub = "more/" if i == count - 1 else ""
                _save(_image(rng, mode, size), root / split / c / f"{sub}{c}_{i:03d}{suffix}")
                k += 1
            (root / split / c / "notes.txt").write_text("not an image\n")
            (root / split / c / ".DS_Store").write_bytes(b"\0")
        (root / split / "README").write_text("about this split\n")
        _save(_image(rng, "RGB", (8, 8)), root / split / ".cache" / "thumb.jpg")
    return root


def write_hf_fixture(root: str | os.PathLike, form="parquet", classes=("ant", "bee", "cow"), n=(9, 4),
                     image_key="image", label_key="label", val=0, seed=0) -> Path:
    """Write an image classification data set with ``datasets`` and return its folder. ``n`` = (train,
    test) rows (``val`` > 0 adds a validation split); labels cycle through ``classes`` (a ClassLabel),
    images through PIL modes and sizes (stored as PNG bytes by ``datasets``' Image feature).

    ``form``: ``parquet`` (``train.parquet`` and ``test-00000-of-00001.parquet``, plus a README.md, as
    ``load_dataset("parquet", data_dir=root)`` reads them), ``dict`` (``DatasetDict.save_to_disk``) or
    ``per_split`` (``Dataset.save_to_disk`` per split: ``root/train/``, ``root/test/``)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature

    rng = np.random.default_rng(seed)
    features = Features({image_key: ImageFeature(), label_key: ClassLabel(names=list(classes))})
    sizes = dict(train=n[0], test=n[1], **({"validation": val} if val else {}))
    splits, k = {}, 0
    for split, count in sizes.items():
        images = [_image(rng, *_pick(k + i)).convert("RGB") if _pick(k + i)[0] in ("CMYK", "I;16")
                  else _image(rng, *_pick(k + i)) for i in range(count)]  # PNG holds neither CMYK nor I;16
        splits[split] = Dataset.from_dict({image_key: images, label_key: [i % len(classes) for i in range(count)]},
                                          features=features)
        k += count
    root = Path(root)
    if form == "parquet":
        root.mkdir(parents=True, exist_ok=True)
        for split, ds in splits.items():
            ds.to_parquet(str(root / ("train.parquet" if split == "train" else f"{split}-00000-of-00001.parquet")))
        (root / "README.md").write_text("# a data set card\n")
    elif form == "dict":
        DatasetDict(splits).save_to_disk(str(root))
    elif form == "per_split":
        for split, ds in splits.items():
            ds.save_to_disk(str(root / split))
    else:
        raise ValueError(f"unknown form {form!r}")
    return root
