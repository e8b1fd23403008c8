"""A stitch leaves as ONNX and is timed on the user's own machine (spec §12, issue 30 items 5 and 7):
``python -m esta export --format onnx`` writes every deployed stitch through ``torch.onnx.export`` with a
dynamic batch axis, ONNX Runtime reproduces the palette's logits (<= 1e-4), and ``python -m esta
profile`` writes the palette's latency columns, by which ``--max-latency-ms`` then selects."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import IMG, make_images
from test_palette import palettes  # noqa: F401  (the module's fixture)
from test_palette import write_pngs

from esta.__main__ import main
from esta.palette import choose
from esta.vit.palette import load


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run_onnx(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])


def test_every_deployed_stitch_in_onnx_equals_the_palette(palettes, tmp_path, capsys):  # noqa: F811
    folder, _ = palettes[0]["esta"]
    palette = load(folder)
    x = make_images(3)  # exported at batch 2: the batch axis is dynamic
    deployed = [0, 7, 20]  # an anchor and a stitch of each pair (the smoke run's test takes every one)
    for sid in deployed:
        assert main(["export", str(folder), "--stitch-id", str(sid), "--format", "onnx", str(tmp_path)]) == 0
        path = tmp_path / f"stitch_{sid:03d}.onnx"
        assert capsys.readouterr().out.strip().endswith(path.name)
        with torch.no_grad():
            assert (run_onnx(path, x) - palette.select(stitch_id=sid)(x)).abs().max() <= 1e-4, sid
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["stitch_id"] == deployed[-1] and meta["classes"] == palette.meta["classes"]
    assert meta["transform"]["img_size"] == IMG
    snnet = load(palettes[0]["snnet"][0]).select(stitch_id=9)  # SN-Net's stitches export the same way
    out = snnet.export(9, tmp_path / "snnet", format="onnx")
    with torch.no_grad():
        assert (run_onnx(out, make_images(1)) - snnet(make_images(1))).abs().max() <= 1e-4


def test_export_format_safetensors_is_the_workflows_export(palettes, tmp_path):  # noqa: F811
    from esta.vit.export import load_stitch

    folder, model = palettes[0]["esta"]
    assert main(["export", str(folder), str(tmp_path), "--stitch-id", "7"]) == 0  # options after the positionals
    with torch.no_grad():
        x = make_images(2)
        assert (load_stitch(tmp_path / "stitch_007.json")(x) - model(x, 7)).abs().max() <= 1e-5


def test_profile_writes_this_machines_latency_and_budgets_select_by_it(palettes, tmp_path, capsys):  # noqa: F811
    from esta.palette import bundle

    folder = tmp_path / "palette"
    import shutil

    shutil.copytree(palettes[0]["esta"][0], folder)
    bundle(folder, palettes[1])  # a copy elsewhere: self-contained
    before = pd.read_csv(folder / "stitches.csv")
    assert main(["profile", str(folder), "--repeats", "2", "--warmup", "1", "--threads", "1",
                 "--runtime", "torch", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "torch" in out
    palette = load(folder)  # the re-recorded table passes its sha256 check
    t = palette.table
    dep = t[t["deployed"]]
    assert (dep["latency_ms_b1"] > 0).all() and (dep["latency_ms_b32"] > 0).all()
    assert not np.allclose(dep["latency_ms_b1"], before.loc[before["deployed"], "latency_ms_b1"])  # measured here
    assert t.loc[~t["deployed"], "latency_ms_b1"].isna().all()
    assert palette.meta["latency"]["runtime"] == "torch" and palette.meta["latency"]["threads"] == 1
    budget = float(dep["latency_ms_b1"].median())
    png = write_pngs(tmp_path, 1)[0]
    assert main(["predict", str(folder), "--max-latency-ms", str(budget), str(png)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"stitch {choose(t, max_latency_ms=budget)}")
