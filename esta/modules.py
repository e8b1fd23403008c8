"""The ``esta`` modules a workflow job runs, for its ``code`` input (STYLE rule 4: rules list the
modules they run, so changed code reruns exactly the jobs it affects).

Snakemake does not follow a script's imports, and hand-kept lists go stale as soon as a module
imports a new one. ``closure`` reads the import statements of the named modules with ``ast``
(nothing is imported or run) and follows every ``esta`` import, at any depth and inside functions
too, so a rule names the modules its script calls and gets everything they need.

``stamp`` is what a job takes as its ``code`` input: one small file per set of modules instead of the
~30 files of its closure (issue 32: ~3,500 jobs x ~30 code files were ~100,000 inputs that Snakemake
looked up, stat-ed and printed at every DAG build, a quarter of its CPU). The stamp lists each file
with its sha256 (so a job's checkpoint key, the digest of its inputs, changes with the code) and has
the newest file's mtime: Snakemake reruns a job when its stamp is newer than its outputs, exactly when
one of the listed files is, as it did with the files themselves.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
from pathlib import Path

__all__ = ["closure", "stamp"]

ROOT = Path(__file__).resolve().parent  # the esta package


def _file(module: str) -> Path | None:
    """The file of a dotted ``esta`` module or package (``esta.vit.data`` -> its ``__init__.py``)."""
    parts = module.split(".")[1:]
    if not parts:
        return ROOT / "__init__.py"
    for f in (ROOT.joinpath(*parts[:-1], parts[-1] + ".py"), ROOT.joinpath(*parts, "__init__.py")):
        if f.is_file():
            return f
    return None


# Cached: input functions call closure once per job, and a DAG of thousands of jobs re-parsed the same
# files thousands of times (`snakemake -n` of config/paper.yaml: 100 of 200 profiled seconds, issue 32).
@functools.lru_cache(maxsize=None)
def _imports(path: Path) -> frozenset[str]:
    """Dotted ``esta`` modules imported by ``path`` (``from esta.x import y`` may name module y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "esta"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "esta":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _file(f"{node.module}.{a.name}")}
    return frozenset(found)


def closure(modules: list[str]) -> list[str]:
    """Paths (relative to the repository, sorted) of the given modules — ``"train"``, ``"vit/stitch"``,
    or a package folder such as ``"vit/data"`` (every module in it) — and of every ``esta`` module
    they import, directly or not. An unknown name is an error naming it."""
    return list(_closure(tuple(modules)))


# Cached as a whole too: input functions ask for the same few module sets once per job (select_inputs:
# ~600 jobs of config/paper.yaml), and following the imports again cost 1-2 s of each DAG build (issue 32).
@functools.lru_cache(maxsize=None)
def _closure(modules: tuple[str, ...]) -> tuple[str, ...]:
    todo = []
    for m in modules:
        folder = ROOT / m
        if folder.is_dir():
            todo += sorted(folder.glob("*.py"))
        elif (ROOT / f"{m}.py").is_file():
            todo.append(ROOT / f"{m}.py")
        else:
            raise ValueError(f"esta has no module or package {m!r} (looked for {ROOT / m}.py)")
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [p / "__init__.py" for p in f.parents if p.is_relative_to(ROOT) and (p / "__init__.py").is_file()]
        todo += [g for g in map(_file, _imports(f)) if g is not None]
    return tuple(sorted(str(Path("esta") / f.relative_to(ROOT)) for f in seen))


@functools.lru_cache(maxsize=None)
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp(modules: list[str], folder: str | os.PathLike) -> str:
    """The stamp file of ``closure(modules)`` in ``folder`` (created or refreshed when the listed files
    changed, left alone otherwise): ``<module names>.<hash of the file list>.txt``, one
    ``<path>\t<sha256>`` line per file, mtime the newest file's. A module that starts or stops
    importing another changes the list, hence the name, which Snakemake sees as a changed input."""
    return _stamp(tuple(modules), os.fspath(folder))


@functools.lru_cache(maxsize=None)
def _stamp(modules: tuple[str, ...], folder: str) -> str:
    files = _closure(modules)
    paths = [ROOT.parent / f for f in files]
    text = "".join(f"{f}\t{_digest(p)}\n" for f, p in zip(files, paths))
    mtime = max(p.stat().st_mtime_ns for p in paths)
    names = "+".join(m.replace("/", ".") for m in modules if m not in ("__init__", "runtime")) or "esta"
    path = os.path.join(folder, f"{names}.{hashlib.sha256(chr(10).join(files).encode()).hexdigest()[:12]}.txt")
    try:
        st = os.stat(path)
        fresh = st.st_mtime_ns == mtime and Path(path).read_text() == text
    except FileNotFoundError:
        fresh = False
    if not fresh:  # written whole, then renamed: a job's Snakemake parsing the workflow meanwhile reads either
        os.makedirs(folder, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        Path(tmp).write_text(text)
        os.utime(tmp, ns=(mtime, mtime))
        os.replace(tmp, path)
    return path
