"""What a data folder looks like, cheaply, when the DAG is built (spec §13, issue 32): :func:`walk`, a
symbolic-link-safe ``os.walk``, and :func:`fingerprint`, which the workflow's ``data_fingerprint``
(workflow/rules/inputs.smk) takes of every custom data set at every DAG build, dry runs included.

Torch-free on purpose: anything under ``esta.vit.data`` imports torch (its package ``__init__``), which
cost ~5 s of CPU of each ``snakemake -n``. ``esta.vit.data.custom`` and ``esta.vit.data.imagefolder``
re-export both names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["walk", "fingerprint"]


def walk(top: str | os.PathLike, _above: tuple = ()):
    """``os.walk(top, followlinks=True)`` in name order, as ``(folder, dirs, files)`` with names: symbolic
    links are followed, and a link that leads back to a folder above it (a cycle, which ``os.walk`` would
    follow forever) is an error naming the link and where it points. Pruning ``dirs`` in place skips
    folders, as with ``os.walk``. One ``stat`` per folder; a file costs no ``stat`` (its type comes with
    the directory entry, except for symbolic links)."""
    st = os.stat(top)
    here = (st.st_dev, st.st_ino)
    if here in _above:
        raise ValueError(f"symbolic link cycle: {top} points to {os.path.realpath(top)}, a folder above it; "
                         "remove the link or point it elsewhere")
    with os.scandir(top) as entries:
        listed = sorted((e.name, e.is_dir()) for e in entries)  # is_dir follows links, like os.walk
    dirs = [name for name, is_dir in listed if is_dir]
    yield os.fspath(top), dirs, [name for name, is_dir in listed if not is_dir]
    for name in dirs:
        yield from walk(os.path.join(top, name), (*_above, here))


def fingerprint(path: str | os.PathLike, stat_files: bool = False) -> str:
    """sha256 of what a data folder looks like, taken when the DAG is built (dry runs included, often
    several times on a cluster's login node): an added, removed or renamed file changes it, which reruns
    ``register_data``. Each folder's relative path, size and mtime and each file's name go in: one
    ``stat`` per folder, none per file, so an ImageNet-sized image folder costs thousands of calls, not a
    million. With ``stat_files`` (Hugging Face data: a few large files, rewritten in place by
    ``save_to_disk``) every file's size and mtime go in too. ``register_data`` itself reads and hashes
    every file (:func:`esta.vit.data.custom.describe_custom`); a file rewritten in place under the same name in an image folder
    is seen there only once something else reruns it (``--forcerun register_data``). A symbolic link
    cycle is an error naming the link (:func:`walk`)."""
    root = Path(path).expanduser()
    if not root.exists():
        return f"missing: {root}"
    h = hashlib.sha256()
    for here, dirs, files in walk(root):
        st = os.stat(here)
        rel = os.path.relpath(here, root)
        h.update(f"{rel}/\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        for f in files:
            line = f"{rel}/{f}"
            if stat_files:
                fst = os.stat(os.path.join(here, f))
                line += f"\t{fst.st_size}\t{fst.st_mtime_ns}"
            h.update(f"{line}\n".encode())
    return h.hexdigest()
