"""Loading a palette from someone else (spec §12, issue 30 "Trust"): every tampering is refused with one
line naming the file and field, before any model is built and before the payload reaches timm; bundled
anchors are stored under the palette's own record names; a second load hashes nothing; and the method
core names no family, not even as a string. Tiny three-anchor ViT family (tests/conftest.py); the LLM
palette's tamperings are in tests/test_palette_llm.py."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
from conftest import IMG, NUM_CLASSES, make_anchors, make_images
from test_palette import CLASSES, SPECS, table, trained, write_pngs

import esta.hashcache
import esta.vit.palette
from esta.__main__ import main
from esta.palette import META, PaletteError
from esta.tensors import save_tensors
from esta.vit.data import describe_transform
from esta.vit.palette import load, transform_record, write

ESTA = Path(__file__).resolve().parents[1] / "esta"


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    """Each test hashes into its own cache file (the per-user cache follows XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def anchor_files(tmp_path_factory):
    """The tiny family's pretrained anchors, each saved as ``<letter>/model.safetensors``: three anchors
    with one file name, as HF-style folders of checkpoints often are."""
    root = tmp_path_factory.mktemp("anchors")
    files = []
    for i, vit in enumerate(make_anchors()):
        files.append(root / "abc"[i] / "model.safetensors")
        files[-1].parent.mkdir()
        save_tensors(vit.state_dict(), files[-1], dict(num_classes=NUM_CLASSES))
    return files


@pytest.fixture(scope="module")
def model(anchor_files):
    return trained("esta", anchor_files)


def write_palette(folder: Path, model, files) -> Path:
    manifest = dict(num_classes=NUM_CLASSES, classes=CLASSES)
    return write(folder, model, table(), fam=SPECS, method="esta", tuning=model.cfg, manifest=manifest,
                 transform=transform_record("embedded/digits", manifest, IMG, describe_transform()),
                 anchor_files=files, settings=dict(variant="default", task="embedded/digits", seed=0))


@pytest.fixture
def palette(tmp_path, model, anchor_files) -> Path:
    return write_palette(tmp_path / "palette", model, anchor_files)


@pytest.fixture
def nothing_built(monkeypatch):
    """Records every model build and every timm model creation; a refusal must leave both empty."""
    calls = []
    real_assemble, real_create = esta.vit.palette.assemble, timm.create_model
    monkeypatch.setattr(esta.vit.palette, "assemble", lambda *a, **k: calls.append("assemble") or real_assemble(*a, **k))
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: calls.append(("create_model", a)) or real_create(*a, **k))
    return calls


def edit_meta(folder: Path, edit) -> None:
    meta = json.loads((folder / META).read_text())
    edit(meta)
    (folder / META).write_text(json.dumps(meta))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def refused(folder: Path, tmp_path, capsys, *extra) -> str:
    """The CLI's answer to predicting with ``folder``: exit 2 and one stderr line, returned."""
    png = write_pngs(tmp_path, 1)[0]
    assert main(["predict", str(folder), "--stitch-id", "3", *extra, str(png)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1 and captured.err.startswith("error: ")
    return captured.err


def with_rows(meta, i, **changes):
    meta["family"][i].update(changes)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["family"][0]["kwargs"].update(checkpoint_path="/etc/passwd"), "field family/0/kwargs"),
    (lambda m: m["family"][1]["kwargs"].update(pretrained=True), "field family/1/kwargs"),
    (lambda m: m["family"][2]["kwargs"].update(pretrained_cfg_overlay=dict(file="x.bin")), "field family/2/kwargs"),
    (lambda m: with_rows(m, 1, timm_name="hf-hub:timm/vit_tiny_patch16_224.augreg_in21k"), "field family/1/timm_name"),
    (lambda m: with_rows(m, 0, timm_name="local-dir:/tmp/model"), "field family/0/timm_name"),
    (lambda m: with_rows(m, 0, timm_name="not_a_timm_model"), "is not a timm model"),
    (lambda m: m.update(anchors=[]), "field anchors"),
    (lambda m: m["anchors"].pop(), "must name 3 pretrained anchors"),
    (lambda m: m["tuning"].update(peft="lora; import os"), "field tuning"),
    (lambda m: m.update(format="esta-palette/1"), "field format"),
])
def test_a_tampered_palette_json_is_refused_before_anything_is_built(palette, tmp_path, capsys, nothing_built,
                                                                      edit, message):
    edit_meta(palette, edit)
    err = refused(palette, tmp_path, capsys)
    assert message in err and str(palette / META) in err
    assert nothing_built == []  # neither a model nor timm saw the payload
    with pytest.raises(PaletteError):
        load(palette)


def test_an_edited_tensors_file_or_table_is_refused(palette, tmp_path, capsys, nothing_built):
    flip_last_byte(palette / "tensors.safetensors")
    err = refused(palette, tmp_path, capsys)
    assert "tensors.safetensors has sha256" in err and "field" not in err or "files" in err
    assert nothing_built == []
    shutil.copyfile(palette / "stitches.csv", tmp_path / "t.csv")
    (palette / "stitches.csv").write_text((palette / "stitches.csv").read_text().replace(",True,", ",False,", 1))
    assert main(["palette", str(palette)]) == 2  # the table alone is checked too
    assert "stitches.csv has sha256" in capsys.readouterr().err


def test_a_swapped_anchor_is_refused_naming_it(palette, anchor_files, tmp_path, capsys, nothing_built):
    swapped = [anchor_files[0], anchor_files[2], anchor_files[1]]
    args = [a for f in swapped for a in ("--anchors", str(f))]
    err = refused(palette, tmp_path, capsys, *args)
    assert "anchors[1] (T1):" in err and "has sha256" in err and nothing_built == []


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "a/b", "..", ".hidden"])
def test_path_like_anchor_names_are_refused_and_nothing_is_written_outside(palette, tmp_path, capsys, name):
    edit_meta(palette, lambda m: m["anchors"][0].update(name=name))
    assert main(["palette", str(palette), "--bundle"]) == 2
    err = capsys.readouterr().err
    assert "field anchors/0/name" in err and len(err.splitlines()) == 1
    assert not (palette / "anchors").exists() and not (tmp_path / "evil").exists()


def test_two_anchors_with_one_file_name_are_bundled_side_by_side_and_load(palette, model, anchor_files, tmp_path,
                                                                          capsys):
    assert len({f.name for f in anchor_files}) == 1  # all three are model.safetensors
    assert main(["palette", str(palette), "--bundle"]) == 0
    assert "bundled 3 anchors" in capsys.readouterr().err
    assert sorted(p.name for p in (palette / "anchors").iterdir()) == ["T0.safetensors", "T1.safetensors",
                                                                        "T2.safetensors"]
    moved = shutil.move(palette, tmp_path / "elsewhere" / "palette")  # self-contained: the recorded paths break
    x = make_images(2)
    for sid in (0, 1, 2, 9):  # every anchor is its own, not one copied over the others
        with torch.no_grad():
            assert (load(moved).select(stitch_id=sid)(x) - model(x, sid)).abs().max() <= 1e-5


def test_a_second_load_hashes_nothing_and_verify_hashes_again(palette, monkeypatch):
    esta.hashcache.cache_path().unlink()  # forget what writing the palette hashed
    hashed = []
    real = esta.hashcache.runtime.file_digest
    monkeypatch.setattr(esta.hashcache.runtime, "file_digest", lambda p: hashed.append(Path(p).name) or real(p))
    load(palette)
    assert sorted(hashed) == ["model.safetensors"] * 3 + ["stitches.csv", "tensors.safetensors"]
    hashed.clear()
    load(palette)
    assert hashed == []  # counted, not timed: the per-user cache answered every digest
    load(palette, verify=True)
    assert len(hashed) == 5
    hashed.clear()
    data = (palette / "tensors.safetensors").read_bytes()
    (palette / "tensors.safetensors").write_bytes(data)  # same bytes, rewritten: the file changed on disk
    load(palette)
    assert hashed == ["tensors.safetensors"]


def test_a_hash_cache_entry_does_not_survive_an_edit(palette, tmp_path, capsys):
    load(palette)  # every digest cached
    flip_last_byte(palette / "tensors.safetensors")
    err = refused(palette, tmp_path, capsys)
    assert "tensors.safetensors has sha256" in err


def _strings(path: Path) -> list[str]:
    """String constants of a module's code (docstrings left out: they may cite the family modules)."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_the_palette_core_names_no_family_not_even_as_a_string():
    for name in ("palette.py", "trust.py", "hashcache.py", "profile.py", "__init__.py"):
        strings = _strings(ESTA / name)
        assert not [s for s in strings if "esta.vit" in s or "esta.llm" in s or s in ("vit", "llm")], name
        assert "importlib" not in (ESTA / name).read_text() or name == "__init__.py", name
    core_schema = json.loads((ESTA / "palette.schema.json").read_text())
    assert "vit" not in json.dumps(core_schema["properties"]["kind"])


def rerecord(folder: Path, name: str) -> None:
    """Record ``name``'s current sha256 in palette.json: a palette its author wrote this way."""
    from esta.trust import file_records

    edit_meta(folder, lambda m: m["files"].update(file_records(folder, [name])))


@pytest.mark.parametrize("break_it, message", [
    (lambda f: (f / "tensors.safetensors").unlink(), "tensors.safetensors is missing"),
    (lambda f: (f / META).write_text('{"format": "esta-palette/2", '), "palette.json: not valid JSON"),
    (lambda f: edit_meta(f, lambda m: m["tuning"].update(rnak=4)), "field tuning: Additional properties"),
    (lambda f: ((f / "stitches.csv").write_text("stitch_id,name\n0,x\n"), rerecord(f, "stitches.csv")),
     "stitches.csv: columns"),
])
def test_every_cli_failure_is_one_line_naming_the_file(palette, tmp_path, capsys, break_it, message):
    break_it(palette)
    assert message in refused(palette, tmp_path, capsys)


def test_a_tensors_file_of_another_shape_is_one_line_naming_it(palette, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(palette / "tensors.safetensors")
    key = next(k for k in sorted(tensors) if k.startswith("biases."))
    tensors[key] = torch.zeros(tensors[key].numel() + 1)
    save_file(tensors, palette / "tensors.safetensors")
    rerecord(palette, "tensors.safetensors")
    err = refused(palette, tmp_path, capsys)
    assert "tensors.safetensors" in err and key in err and "shape" in err
