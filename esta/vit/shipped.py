"""Anchors shipped inside the package: the embedded family pretrained at length (spec §8, our [decision]).

Why: the default run must draw its main figure in about 20 minutes on a 2-core CPU, which leaves no
time to pretrain the anchors well; pretrained briefly, the largest anchor transferred nothing
(issue 11). So ``config/upstream.yaml`` pretrains the family once, at length, on the rich upstream
set (``esta.vit.upstream``), and the result lives in ``esta/vit/assets/<family>/``:

- ``anchor<i>.safetensors``: the state dict written by the workflow's ``pretrain_anchor`` step, stored
  as float16 to keep the package small (a few MB), with the same ``esta`` metadata plus
  ``stored_dtype`` and the sha256 of the float32 file it came from;
- ``anchor<i>.json``: that step's info record (upstream accuracy, steps, wall time, recipe);
- ``manifest.json``: sha256 and size of every file above, the exact command that made them, the
  recipe (the ``anchors.pretrain`` slice) and the accuracies, so a reader can check what they got.

``anchors.source: shipped`` installs these files as the run's anchors (``install``: checked against
the manifest, cast back to float32); ``anchors.source: pretrain`` still rebuilds them from scratch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from esta import runtime
from esta.tensors import load_tensors_file, save_tensors

__all__ = ["ASSETS", "MANIFEST", "shipped_dir", "read_shipped", "ship", "install"]

ASSETS = Path(__file__).parent / "assets"
MANIFEST = "manifest.json"
_STORED_DTYPE = torch.float16


def shipped_dir(family_name: str) -> Path:
    """The folder of a family's shipped anchors; a family without one names the layout expected."""
    return runtime.shipped_folder(ASSETS, family_name, MANIFEST, "anchors",
                                  "anchor<i>.safetensors and anchor<i>.json", "anchors.source")


def read_shipped(folder: str | Path) -> dict:
    """The manifest of a shipped folder, after checking every file it lists against its sha256 and size."""
    folder = Path(folder)
    path, manifest = runtime.read_listing(folder, MANIFEST)
    for entry in manifest["anchors"]:
        for key in ("file", "info"):
            runtime.check_listed(folder / entry[key], entry[f"{key}_sha256"], entry[f"{key}_bytes"], path)
    return manifest


def ship(weights: list[str | Path], infos: list[str | Path], folder: str | Path, command: str,
         recipe: dict, family_name: str = "embedded", extra: dict | None = None) -> dict:
    """Store the pretrained anchors ``weights`` (and their ``infos`` records) in ``folder`` with a
    manifest; ``command`` is the exact command that made them, ``recipe`` its config slice, ``extra``
    any further record (e.g. the commit it ran on)."""
    folder = runtime.ship_folder(folder, weights, infos, "weight file")
    entries = []
    for i, (w, inf) in enumerate(zip(weights, infos)):
        tensors, meta = load_tensors_file(w)
        stored = {k: v.to(_STORED_DTYPE) if v.is_floating_point() else v for k, v in tensors.items()}
        name, info_name = f"anchor{i}.safetensors", f"anchor{i}.json"
        save_tensors(stored, folder / name, dict(meta, stored_dtype=str(_STORED_DTYPE).removeprefix("torch."),
                                                 source_sha256=runtime.file_digest(w)))
        shutil.copyfile(inf, folder / info_name)
        info = json.loads(Path(inf).read_text())
        entries.append(dict(
            anchor=info["anchor"], file=name, file_sha256=runtime.file_digest(folder / name),
            file_bytes=(folder / name).stat().st_size, info=info_name,
            info_sha256=runtime.file_digest(folder / info_name), info_bytes=(folder / info_name).stat().st_size,
            source_sha256=runtime.file_digest(w), upstream_classes=info["num_classes"],
            upstream_val_accuracy=info["accuracy"], steps=info["steps"], wall_s=info["wall_s"],
            params=info["params"]))
    manifest = dict(family=family_name, command=command, recipe=recipe, anchors=entries,
                    provenance=runtime.provenance("cpu"), **(extra or {}))
    runtime.write_json(folder / MANIFEST, manifest)
    return read_shipped(folder)


def install(folder: str | Path, i: int, weights_out: str | Path, info_out: str | Path) -> dict:
    """Write shipped anchor ``i`` of ``folder`` as a run's anchor: float32 weights at ``weights_out``
    and its info record at ``info_out``, both naming the manifest they were checked against."""
    folder = Path(folder)
    manifest = read_shipped(folder)
    if not 0 <= i < len(manifest["anchors"]):
        raise ValueError(f"{folder / MANIFEST} ships {len(manifest['anchors'])} anchors; anchor {i} requested")
    entry = manifest["anchors"][i]
    tensors, meta = load_tensors_file(folder / entry["file"])
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    shipped = dict(folder=str(folder), manifest_sha256=runtime.file_digest(folder / MANIFEST),
                   file_sha256=entry["file_sha256"], command=manifest["command"])
    os.makedirs(Path(weights_out).parent, exist_ok=True)
    save_tensors(tensors, weights_out, dict(meta, shipped=shipped))
    info = json.loads((folder / entry["info"]).read_text())
    runtime.write_json(info_out, dict(info, shipped=shipped))
    return entry
