"""A job's ``code`` input (STYLE rule 4, issue 32): one stamp file per set of modules
(``esta.modules.stamp``) that changes, and is newer, exactly when a module its rule runs changes, so
Snakemake reruns exactly the jobs the change affects, with one input per job instead of ~30."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import esta.modules as modules
from conftest import ROOT


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the esta package that the stamps read (``esta.modules.ROOT``), caches emptied."""
    copy = tmp_path / "repo" / "esta"
    shutil.copytree(ROOT / "esta", copy, ignore=shutil.ignore_patterns("assets", "__pycache__", "*.safetensors"))
    monkeypatch.setattr(modules, "ROOT", copy)
    for cached in (modules._imports, modules._closure, modules._stamp, modules._digest):
        cached.cache_clear()
    yield copy
    for cached in (modules._imports, modules._closure, modules._stamp, modules._digest):
        cached.cache_clear()


def fresh(names, folder):
    modules._stamp.cache_clear()  # a new DAG build (a new process)
    modules._digest.cache_clear()
    return Path(modules.stamp(names, folder))


def touch_later(path: Path, text: str | None = None):
    """Rewrite (or touch) ``path``, its mtime a second past any file's so far (an edit's, distinct even on
    a coarse clock)."""
    if text is not None:
        path.write_text(text)
    later = max(time.time_ns(), path.stat().st_mtime_ns) + 1_000_000_000
    os.utime(path, ns=(later, later))


def test_stamp_lists_the_closure_with_digests_and_the_newest_mtime(package, tmp_path):
    stamp = fresh(["__init__", "runtime", "vit/evaluate"], tmp_path / "stamps")
    lines = [line.split("\t") for line in stamp.read_text().splitlines()]
    files = [f for f, _ in lines]
    assert files == modules.closure(["__init__", "runtime", "vit/evaluate"]) and "esta/vit/stitch.py" in files
    import hashlib
    assert all(d == hashlib.sha256((package.parent / f).read_bytes()).hexdigest() for f, d in lines)
    assert stamp.stat().st_mtime_ns == max((package.parent / f).stat().st_mtime_ns for f in files)
    assert stamp.name.startswith("vit.evaluate.")


def test_stamp_changes_with_its_modules_only(package, tmp_path):
    folder = tmp_path / "stamps"
    evaluate = fresh(["vit/evaluate"], folder)
    palette = fresh(["palette"], folder)
    st_eval, st_pal = evaluate.stat(), palette.stat()
    # a new build with nothing changed leaves both files alone (no write: jobs' Snakemakes parse it too)
    assert fresh(["vit/evaluate"], folder) == evaluate and evaluate.stat().st_ino == st_eval.st_ino
    assert evaluate.stat().st_mtime_ns == st_eval.st_mtime_ns
    # an edit of a module vit/evaluate imports: its stamp is newer and its digest line changed; palette's
    # closure does not hold that module, its stamp is untouched
    stitch = package / "vit" / "stitch.py"
    assert "esta/vit/stitch.py" in evaluate.read_text() and "esta/vit/stitch.py" not in palette.read_text()
    before = evaluate.read_text()
    touch_later(stitch, stitch.read_text() + "\n# edited\n")
    assert fresh(["vit/evaluate"], folder) == evaluate
    assert evaluate.stat().st_mtime_ns == stitch.stat().st_mtime_ns > st_eval.st_mtime_ns
    assert evaluate.read_text() != before
    assert fresh(["palette"], folder) == palette and palette.stat().st_mtime_ns == st_pal.st_mtime_ns
    # a touch without an edit reruns too, as a listed file's mtime did
    touch_later(stitch)
    assert fresh(["vit/evaluate"], folder).stat().st_mtime_ns == stitch.stat().st_mtime_ns


def test_a_new_import_renames_the_stamp(package, tmp_path):
    """A module that starts importing another changes the file list, hence the stamp's name: the
    jobs see a changed input set (Snakemake's input rerun trigger)."""
    folder = tmp_path / "stamps"
    pareto = fresh(["pareto"], folder)
    assert "esta/vit/stitch.py" not in pareto.read_text()
    touch_later(package / "pareto.py", (package / "pareto.py").read_text() + "\nimport esta.vit.stitch  # noqa\n")
    modules._imports.cache_clear()
    modules._closure.cache_clear()
    renamed = fresh(["pareto"], folder)
    assert renamed != pareto and renamed.name.startswith("pareto.") and "esta/vit/stitch.py" in renamed.read_text()


def test_unknown_module_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match="no module or package 'vit/nope'"):
        modules.stamp(["vit/nope"], tmp_path)
