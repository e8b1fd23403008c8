"""Loading a palette from someone else (spec §12; issue 30 "Trust").

A palette folder is data a user may receive from anyone, so before anything is built:

- ``palette.json`` is validated against the JSON Schema shipped in the package
  (``esta/palette.schema.json``; the family adds its own, e.g. ``esta/vit/palette.schema.json``);
- every file the loader reads is under a sha256 record: the palette's own files (``files``: tensors,
  table, tokenizer) and every file of every anchor (``anchors[].files``: a weight file, or *every*
  file of an HF folder -- weights in any format, configs, tokenizer); a folder holding a file the
  palette does not list is refused, so a ``pytorch_model.bin`` dropped beside the recorded weights
  cannot be read instead of them;
- bundled anchors are stored under the palette's own record names (``anchors/<name>[.suffix]``),
  which the schema restricts to plain names: no ``/``, no ``..``, no absolute paths, unique.

Digests come from ``esta.hashcache`` (cached per user by size, mtime, ctime and inode; ``verify``
re-hashes). Every refusal is a ``PaletteError`` naming the file and the field.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from esta import hashcache

__all__ = ["PaletteError", "SCHEMA", "validate", "file_records", "listing", "anchor_record", "check_files", "check_anchors",
           "bundled_name", "copy_anchor"]


class PaletteError(ValueError):
    """A palette, an anchor, a budget or an input that cannot be used; the message names it."""


SCHEMA = Path(__file__).with_name("palette.schema.json")  # package data (pyproject's package-data)


def validate(meta: dict, schema: Path, where: Path) -> None:
    """Validate ``meta`` against the JSON Schema file ``schema`` (``SCHEMA``, or a family's own); the
    first error names the file and the JSON path of the offending value."""
    import jsonschema
    from jsonschema.exceptions import best_match

    schema = json.loads(Path(schema).read_text())
    err = best_match(jsonschema.Draft202012Validator(schema).iter_errors(meta))
    if err is not None:
        field = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise PaletteError(f"{where}: field {field}: {err.message}")


def file_records(folder: Path, names: list[str]) -> dict[str, dict]:
    """``{name: {sha256, bytes}}`` of files under ``folder`` (names relative, POSIX)."""
    return {n: dict(sha256=hashcache.sha256(folder / n), bytes=(folder / n).stat().st_size) for n in names}


def listing(folder: Path) -> list[str]:
    """Every file under ``folder`` but hidden ones (``.snakemake_timestamp``, ``.DS_Store``, ``.git``):
    no model or tokenizer loader reads a file by a hidden name."""
    names = (f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
    return sorted(n for n in names if not any(part.startswith(".") for part in n.split("/")))


def anchor_record(name: str, path: str | Path, relative_to: str | Path) -> dict:
    """``{name, path, folder, files}`` of one anchor: a weight file, or a folder (an HF model) with
    every file in it, each with its sha256 and bytes. ``path`` is stored relative to ``relative_to``
    (the palette's folder), so results/ can be moved as a whole."""
    path = Path(path)
    if path.is_dir():
        files = file_records(path, listing(path))
    else:
        files = {path.name: file_records(path.parent, [path.name])[path.name]}
    return dict(name=name, path=os.path.relpath(path, relative_to), folder=path.is_dir(), files=files)


def check_files(records: dict[str, dict], folder: Path, what: str, verify: bool = False,
                complete: bool = False) -> None:
    """Every recorded file under ``folder`` has its sha256; with ``complete``, the folder holds no
    other file. Errors name ``what`` (the palette field) and the file."""
    for fname, want in records.items():
        f = folder / fname
        if not f.is_file():
            raise PaletteError(f"{what}: {f} is missing (the palette lists {fname})")
        got = hashcache.sha256(f, verify=verify)
        if got != want["sha256"]:
            raise PaletteError(f"{what}: {f} has sha256 {got}, the palette lists {want['sha256']}: "
                               "another file than the one this palette was written with")
    if complete:
        extra = sorted(set(listing(folder)) - set(records))
        if extra:
            raise PaletteError(f"{what}: {folder} holds files the palette has no sha256 record of: {extra[:5]} "
                               "(a loader could read them); remove them or rebuild the palette")


def check_anchors(records: list[dict], paths: list[Path], verify: bool = False) -> None:
    """Every file of every anchor has the sha256 the palette lists, and an anchor folder holds no file
    the palette does not list."""
    for i, (rec, path) in enumerate(zip(records, paths, strict=True)):
        what = f"anchors[{i}] ({rec['name']})"
        if rec["folder"]:
            if not path.is_dir():
                raise PaletteError(f"{what}: {path} is missing or not a folder (the palette lists an HF folder)")
            check_files(rec["files"], path, what, verify, complete=True)
        else:
            (fname,) = rec["files"]
            if not path.is_file():
                raise PaletteError(f"{what}: {path} is missing (the palette lists {fname})")
            check_files({path.name: rec["files"][fname]}, path.parent, what, verify)


def bundled_name(rec: dict) -> str:
    """The name of an anchor's copy in a bundle: its record name, plus the weight file's suffix for a
    file (timm picks its loader by suffix). Never a path component of the JSON beyond that."""
    if rec["folder"]:
        return rec["name"]
    (fname,) = rec["files"]
    return rec["name"] + Path(fname).suffix


def copy_anchor(src: Path, dest: Path) -> None:
    """Copy a file or folder to ``dest`` atomically (beside it, then renamed)."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    dest.parent.mkdir(exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, tmp)
    if dest.is_dir():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
