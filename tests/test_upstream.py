"""The rich upstream set (esta.vit.upstream) and the anchors shipped in the package (esta.vit.shipped)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from esta.vit import embedded, upstream
from esta.vit.anchors import family
from esta.vit.build import open_task, write_manifest
from esta.tensors import load_tensors_file
from esta.vit.shipped import ASSETS, MANIFEST, install, read_shipped, ship, shipped_dir

ROOT = Path(__file__).resolve().parents[1]


def _config(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_class_table_matches_groups():
    names = upstream.class_names()
    assert len(names) == upstream.CLASSES == sum(upstream.GROUPS.values())
    assert len(set(names)) == len(names)
    # every group a downstream kind of content needs is there, with many classes in all
    assert {"glyph", "count", "pose", "photo", "pattern"} <= set(upstream.GROUPS)
    assert upstream.CLASSES >= 200


def test_rich_upstream_is_deterministic_and_balanced(tmp_path):
    a = upstream.make_rich_upstream(tmp_path / "a", seed=3, n_per_class=2, n_val_per_class=1)
    b = upstream.make_rich_upstream(tmp_path / "b", seed=3, n_per_class=2, n_val_per_class=1)
    c = upstream.make_rich_upstream(tmp_path / "c", seed=4, n_per_class=2, n_val_per_class=1)
    for split, per_class in (("train", 2), ("val", 1)):
        lines = (a / f"{split}.txt").read_text().splitlines()
        labels = np.array([int(line.split()[1]) for line in lines])
        assert np.bincount(labels, minlength=upstream.CLASSES).tolist() == [per_class] * upstream.CLASSES
        assert lines == (b / f"{split}.txt").read_text().splitlines()
    first = sorted((a / "images" / "train").iterdir())[:20]
    assert all(f.read_bytes() == (b / "images" / "train" / f.name).read_bytes() for f in first)
    assert any(f.read_bytes() != (c / "images" / "train" / f.name).read_bytes() for f in first)


def test_render_rejects_unknown_classes():
    with pytest.raises(ValueError, match=r"\[0, 284\)"):
        upstream.render(np.random.default_rng(0), np.array([0, upstream.CLASSES]))


def test_upstream_never_reads_the_downstream_photos(monkeypatch):
    """The photo classes come only from the photos reserved for upstream, never from a task's photos."""
    read = []
    real = upstream._photo

    def spy(filename, scale):
        read.append(filename)
        return real(filename, scale)

    monkeypatch.setattr(upstream, "_photo", spy)
    upstream.render(np.random.default_rng(0), np.arange(upstream.CLASSES))
    task_photos = {f for f, _ in embedded._TEXTURES + embedded._MEDICAL}
    assert set(read) == {f for f, _ in upstream._UPSTREAM_BG}
    assert not set(read) & task_photos


def test_count_classes_scale_with_the_count():
    """Within a kind, the painted area grows in proportion to the object count (non-overlapping objects)."""
    rng = np.random.default_rng(0)
    area = []
    for k in (0, 1, 4, 9):  # ellipses x1, x2, x5, x10
        x = upstream._render_count(rng, np.full(200, k))
        # pixels far from the image's median colour (the background) are object pixels
        area.append((np.abs(x - np.median(x, axis=(1, 2), keepdims=True)).max(axis=3) > 60).mean())
    assert np.allclose(np.array(area) / area[0], [1, 2, 5, 10], rtol=0.25)


# ---- shipped anchors --------------------------------------------------------------------------

def test_shipped_anchors_match_their_manifest():
    folder = shipped_dir("embedded")
    m = read_shipped(folder)  # raises on any sha256 or size mismatch
    specs = family("embedded")
    assert [a["anchor"] for a in m["anchors"]] == [s.name for s in specs]
    # the default config's recipe is the one that made them, so source: pretrain rebuilds them
    assert m["recipe"] == _config("config.yaml")["anchors"]["pretrain"]
    assert m["recipe"] == _config("config/upstream.yaml")["anchors"]["pretrain"]
    assert _config("config.yaml")["anchors"]["source"] == "shipped"
    assert "config/upstream.yaml" in m["command"]
    acc = [a["upstream_val_accuracy"] for a in m["anchors"]]
    chance = 1 / m["anchors"][0]["upstream_classes"]
    assert acc == sorted(acc) and len(set(acc)) == len(acc), f"upstream accuracy not Ti < S < B: {acc}"
    assert min(acc) >= 3 * chance
    assert sum(a["file_bytes"] for a in m["anchors"]) < 20e6  # a few MB in the package


def test_unshipped_family_names_the_layout():
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        shipped_dir("vit-ti-s-b")


def test_tampered_shipped_file_is_refused(tmp_path):
    folder = shutil.copytree(shipped_dir("embedded"), tmp_path / "embedded")
    target = folder / "anchor0.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="anchor0.safetensors does not match"):
        read_shipped(folder)


def test_installed_anchor_is_the_shipped_one_in_float32(tmp_path):
    from esta.vit.anchors import build_anchor

    folder = shipped_dir("embedded")
    m = read_shipped(folder)
    i = len(m["anchors"]) - 1
    entry = install(folder, i, tmp_path / "a.safetensors", tmp_path / "a.json")
    tensors, meta = load_tensors_file(tmp_path / "a.safetensors")
    stored, _ = load_tensors_file(folder / entry["file"])
    assert all(t.dtype == torch.float32 for t in tensors.values())
    assert all(torch.equal(tensors[k], stored[k].float()) for k in stored)
    assert meta["shipped"]["file_sha256"] == entry["file_sha256"]
    info = json.loads((tmp_path / "a.json").read_text())
    assert info["accuracy"] == entry["upstream_val_accuracy"] and info["shipped"]["command"] == m["command"]
    # it loads into its timm architecture with a fresh task head
    spec = family("embedded")[i]
    model = build_anchor(type(spec)(spec.name, spec.timm_name, spec.kwargs, meta["num_classes"]), 7,
                         tmp_path / "a.safetensors")
    assert torch.equal(model.blocks[0].attn.qkv.weight, tensors["blocks.0.attn.qkv.weight"])
    assert model.head.out_features == 7


def test_short_run_of_the_shipped_recipe(tmp_path):
    """The recipe of config/upstream.yaml, shortened to a few steps: render, pretrain, ship, install."""
    from esta.sampling import SamplerConfig, StitchSampler
    from esta.train import TrainConfig, train
    from esta.vit.anchors import build_anchor
    from esta.tensors import save_tensors
    from esta.vit.stitch import StitchedViT
    from esta.vit.tuning import TuningConfig, make_tunable

    recipe = _config("config/upstream.yaml")["anchors"]["pretrain"]
    assert recipe["upstream"] == "rich" and recipe["n_classes"] == upstream.CLASSES
    root = upstream.make_rich_upstream(tmp_path / "up", seed=0, n_per_class=1, n_val_per_class=1)
    manifest = write_manifest(tmp_path / "up.json", root, "upstream", recipe["n_classes"])
    data = open_task(manifest, "train", 32)
    spec = family("embedded")[0]
    anchor = build_anchor(spec, recipe["n_classes"])
    model = make_tunable(StitchedViT([anchor]), TuningConfig(mode="full"))
    keys = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs")
    cfg = TrainConfig(**dict({k: recipe[k] for k in keys}, epochs=1, warmup_epochs=0))
    sampler = StitchSampler(1, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=0)
    before = anchor.blocks[0].mlp.fc1.weight.detach().clone()
    result = train(model, data, cfg, sampler, progress=False)
    assert result.steps == 3  # 284 images, batch 128
    assert not torch.equal(before, anchor.blocks[0].mlp.fc1.weight)
    meta = dict(anchor=spec.name, num_classes=recipe["n_classes"])
    save_tensors(anchor.state_dict(), tmp_path / "w.safetensors", meta)
    (tmp_path / "w.json").write_text(json.dumps(dict(anchor=spec.name, num_classes=recipe["n_classes"],
                                                     accuracy=0.01, steps=result.steps, wall_s=1.0, params=1)))
    m = ship([tmp_path / "w.safetensors"], [tmp_path / "w.json"], tmp_path / "ship", "pytest", recipe)
    assert (tmp_path / "ship" / MANIFEST).is_file() and m["recipe"] == recipe
    install(tmp_path / "ship", 0, tmp_path / "out.safetensors", tmp_path / "out.json")
    back, _ = load_tensors_file(tmp_path / "out.safetensors")
    w = anchor.blocks[0].mlp.fc1.weight.detach()
    assert torch.allclose(back["blocks.0.mlp.fc1.weight"], w, rtol=1e-3, atol=1e-4)  # float16 storage
    assert ASSETS.name == "assets"
