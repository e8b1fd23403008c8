"""Tensor files of every workflow artifact (STYLE: artifacts describe themselves; spec §5-§7, §11).

Anchors, LS-initialised stitching layers, trained states and exports are safetensors files with the
settings that made them as JSON in the header (key ``esta``), written atomically. Loading a trained
state into a model checks keys *and* shapes and names the file when they differ, for both families.
No pickle is ever read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from esta.runtime import atomic_path

__all__ = ["save_tensors", "load_tensors_file", "read_meta", "load_trainable", "copy_into"]


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, meta: dict | None = None) -> None:
    """safetensors, written atomically, with ``meta`` as JSON in the header."""
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    tmp = atomic_path(path)
    save_file(state, str(tmp), metadata={"esta": json.dumps(meta or {}, default=str)})
    os.replace(tmp, path)


def read_meta(path: str | Path) -> dict:
    """The ``esta`` metadata of a safetensors file (no tensor is read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("esta", "{}"))


def load_tensors_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the ``esta`` metadata of a safetensors file."""
    meta = read_meta(path)
    return load_file(str(path)), meta


def copy_into(targets: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: str | Path,
              what: str = "the model") -> None:
    """Copy ``tensors`` into ``targets`` (same keys, same shapes) in place, or raise an error naming
    ``source`` and the first differing keys or shapes. Values are cast to each target's dtype."""
    if set(tensors) != set(targets):
        extra, missing = sorted(set(tensors) - set(targets)), sorted(set(targets) - set(tensors))
        raise ValueError(f"{source} does not fit {what} (trained with other settings?): "
                         f"unexpected {extra[:3]}, missing {missing[:3]}")
    bad = [k for k, v in tensors.items() if targets[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise ValueError(f"{source}: {k} has shape {tuple(tensors[k].shape)}, {what} has {tuple(targets[k].shape)}")
    with torch.no_grad():
        for k, v in tensors.items():
            targets[k].copy_(v)


def load_trainable(model, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Copy a trained state into ``model.trainable()`` (any family's tunable model): same keys,
    same shapes, or an error naming ``source`` (a state file, or a snapshot inside one)."""
    copy_into(model.trainable(), tensors, source)
