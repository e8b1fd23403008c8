"""Assemble models from workflow artifacts: anchors from weight files, stitching layers, trained
state (spec §4-§7). Every artifact is safetensors with its settings in the metadata (``esta.tensors``),
and loading checks that the file fits the model, naming the file when it does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from esta.tensors import load_tensors_file, load_trainable
from esta.vit.anchors import build_family, family
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, TunableViT, make_tunable

__all__ = [
    "fixed_batch",
    "assemble",
    "anchor_arch",
    "open_task",
    "write_manifest",
    "register_task",
    "read_manifest",
    "data_key",
    "tuning_config",
]


def anchor_arch(family_name: str) -> list[dict]:
    """timm name and kwargs of each anchor, for exported stitches to rebuild themselves."""
    return [dict(name=s.name, timm_name=s.timm_name, kwargs=s.kwargs) for s in family(family_name)]


def _load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = [k for k in tensors if k in own and own[k].shape != tensors[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"{path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {bad[:3]}"
        )
    module.load_state_dict(tensors)


def assemble(
    family_name: str,
    num_classes: int,
    anchor_files: list[str | Path],
    stitch_file: str | Path | None = None,
    tuning_cfg: TuningConfig | None = None,
    state_file: str | Path | None = None,
    task: str | None = None,
) -> TunableViT:
    """Anchors -> StitchedViT (+ LS-initialised stitching layers) -> trainable set (+ trained state).

    ``task``: the task the model is for; an anchor file keeps its head only if it was trained on it
    (``esta.vit.anchors.build_family``)."""
    net = StitchedViT(build_family(family_name, num_classes, anchor_files, task=task))
    if stitch_file is not None:
        tensors, _ = load_tensors_file(stitch_file)
        _load_strict(net.stitch_layers, tensors, stitch_file)
    model = make_tunable(net, tuning_cfg or TuningConfig())
    if state_file is not None:
        load_trainable(model, load_tensors_file(state_file)[0], state_file)
    return model


# ---------------------------------------------------------------------------------------------
# Task data from a manifest (written by the data rules)

_IN_MEMORY_BYTES = 1 << 30  # decode a split once into RAM when it fits in 1 GiB as float32


def _list_files(task_dir: Path) -> dict:
    """Bytes and sha256 of the list files of a VTAB-layout folder (the upstream set)."""
    from esta.runtime import file_digest

    return {f.name: dict(bytes=f.stat().st_size, sha256=file_digest(f)) for f in sorted(task_dir.glob("*.txt"))}


def write_manifest(path: str | Path, task_dir: str | Path, task: str, num_classes: int | None = None) -> dict:
    """Check a task folder (every split, eagerly) and describe it: root, classes, split sizes, and
    bytes + sha256 of its list files. Tasks of ``esta.vit.data.TASKS`` are checked by
    ``esta.vit.data.check_task``; any other name (the upstream set) is a VTAB-layout folder of
    ``num_classes`` classes. Downstream jobs take the manifest as input, so changed data reruns them.
    """
    from esta.vit.data import TASKS, VtabFolder, check_task, eval_transform
    from esta.runtime import write_json

    task_dir = Path(task_dir)
    if task in TASKS:
        desc = check_task(task_dir, task)
        splits, files, num_classes = desc["splits"], desc["files"], desc["num_classes"]
    else:
        files = _list_files(task_dir)
        splits = {Path(f).stem: len(VtabFolder(task_dir, Path(f).stem, num_classes, eval_transform(8))) for f in files}
    # A root inside the manifest's folder is stored relative to it, so results/ can be moved.
    root = str(task_dir.resolve()) if task_dir.is_absolute() else os.path.relpath(task_dir, Path(path).parent)
    manifest = dict(task=task, root=root, num_classes=num_classes, splits=splits, files=files)
    write_json(path, manifest)
    return manifest


def register_task(path: str | Path, task: str, data_root: str | None, dataset: dict | None) -> dict:
    """``register_data``: check an external task whole and write its manifest. A task of the table
    reads ``<data_root>/<its folder>``; a custom task (spec §13) the data set ``dataset`` (its entry of
    config ``datasets``, ``esta.vit.data.custom``), whose manifest also lists its classes."""
    from esta.runtime import write_json
    from esta.vit.data import DATA_ROOT_LAYOUT, is_custom, task_info
    from esta.vit.data.custom import CustomDataset, describe_custom
    from esta.vit.tasks import custom_name

    if is_custom(task):
        if dataset is None:
            raise ValueError(f"task {task!r} needs config key datasets.{custom_name(task)} "
                             "({source: imagefolder|hf, path: ...})")
        manifest = describe_custom(task, CustomDataset.from_config(custom_name(task), dataset))
        write_json(path, manifest)
        return manifest
    if data_root is None:
        raise ValueError(f"task {task!r} reads external data, but config key data_root is not set; "
                         f"run with --config data_root=/path/to/data. Expected layout: {DATA_ROOT_LAYOUT}")
    return write_manifest(path, Path(data_root).expanduser().resolve() / task_info(task).folder, task)


def read_manifest(path: str | Path) -> dict:
    """A data manifest with its ``root`` resolved (relative roots are relative to the manifest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data manifest not found: {path}")
    manifest = json.loads(path.read_text())
    manifest["root"] = str(path.parent / manifest["root"])
    return manifest


def data_key(manifest: dict) -> dict:
    """What identifies a task's data in a checkpoint's settings: split sizes and list-file checksums."""
    return {k: manifest[k] for k in ("task", "splits", "files")}


def open_task(manifest: str | Path | dict, split: str, img_size: int, num_workers: int = 0,
              augment: bool | None = None, normalize: str = "imagenet", family: str | None = None,
              fgvc_interpolation: str = "bicubic", lazy: bool = False):
    """Split ``split`` of the task a manifest describes (``esta.vit.data.open_split``; a custom task's by
    ``esta.vit.data.custom.open_custom``). Splits without
    random augmentation that fit in 1 GiB as float32 are decoded once and come back as tensors,
    unless ``lazy``: then images are decoded when indexed (for jobs that use a few of them).
    ``normalize`` / ``family`` / ``fgvc_interpolation`` are config keys ``data.normalize``, ``family``
    and ``data.fgvc_interpolation`` (``esta.vit.data.normalization``)."""
    from torch.utils.data import TensorDataset

    from esta.vit.data import (TASKS, VtabFolder, augmented, eval_transform, is_custom, load_tensors, normalization,
                               open_split)
    from esta.vit.data.custom import open_custom

    m = manifest if isinstance(manifest, dict) else read_manifest(manifest)
    if m["task"] in TASKS:
        ds = open_split(m["root"], m["task"], split, img_size, augment=augment, normalize=normalize, family=family,
                        fgvc_interpolation=fgvc_interpolation)
        random = augmented(m["task"], split) if augment is None else augment
    elif is_custom(m["task"]):
        ds, random = open_custom(m, split, img_size, augment, normalization(normalize, family), fgvc_interpolation)
    else:
        transform = eval_transform(img_size, mean_std=normalization(normalize, family))
        ds, random = VtabFolder(m["root"], split, m["num_classes"], transform), False
    if not lazy and not random and len(ds) * 3 * img_size * img_size * 4 <= _IN_MEMORY_BYTES:
        return TensorDataset(*load_tensors(ds, num_workers=num_workers))
    return ds


def fixed_batch(dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of ``n`` items of ``dataset`` drawn by a permutation seeded with ``seed``
    (all of them when it holds fewer): the fixed batch of LS init, importance refresh and the
    gradient-interference analysis. Only those ``n`` items are read (decoded)."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


# ---------------------------------------------------------------------------------------------
# Method settings from the workflow's config slices


def tuning_config(method: str, method_cfg: dict) -> TuningConfig:
    """ESTA's PST settings from the `esta` slice; SN-Net trains everything."""
    if method == "snnet":
        return TuningConfig(mode="full")
    if method != "esta":
        raise ValueError(f"unknown method {method!r}; expected 'esta' or 'snnet'")
    lora, peft = method_cfg["lora"], method_cfg["peft"]
    return TuningConfig(
        mode="pst",
        rank=lora["rank"],
        alpha=lora["alpha"],
        dropout=lora["dropout"],
        targets=lora["targets"],
        stitch_biases=method_cfg["stitch_biases"],
        peft=peft["method"],
        adapter_bottleneck=peft["adapter"]["bottleneck"],
        adaptformer_bottleneck=peft["adaptformer"]["bottleneck"],
        adaptformer_scale=peft["adaptformer"]["scale"],
    )
