"""The ViT palette (spec §12, issues 24 and 30): the folder holds the task tensors only, loads in a
fresh process into a model whose every stitch gives the trained model's logits and whose exports equal
the workflow's, ``select`` moves only the active stitch's own biases and every stitch then equals its
export, a budget serves the most accurate measured stitch, predict applies the task's transform, and
the CLI names every bad input in one line. Tiny three-anchor family (tests/conftest.py), PST and
SN-Net's full tuning. Tampering, ONNX and profiling: tests/test_palette_trust.py, test_palette_onnx.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import IMG, NUM_CLASSES, ROOT, make_anchors, make_images, perturb_as_trained, tiny_arch
from PIL import Image
from safetensors.torch import load_file, save_file

from esta.__main__ import main
from esta.llm.build import assemble as assemble_llm
from esta.llm.build import stitched
from esta.palette import TENSORS, PaletteError, choose, stitch_table
from esta.tensors import save_tensors
from esta.vit.anchors import AnchorSpec
from esta.vit.build import anchor_arch, assemble
from esta.vit.data import describe_transform, eval_transform
from esta.vit.data.files import load_rgb
from esta.vit.export import export_stitch, load_stitch
from esta.vit.info import stitch_table as family_table
from esta.vit.palette import load, transform_record, write
from esta.vit.tuning import TuningConfig

SPECS = tuple(AnchorSpec(f"T{i}", a["timm_name"], a["kwargs"], NUM_CLASSES) for i, a in enumerate(tiny_arch()))
DEPLOYED = [0, 1, 2, 7, 15, 20]
DOMINATED = {15}  # the run says a cheaper deployed stitch scores as well
CLASSES = [f"class_{c}" for c in "abcde"]


def trained(method: str, files: list) -> torch.nn.Module:
    """A model of the tiny family as after training: every parameter that trains (LoRA A/B, stitch
    biases, heads; SN-Net: everything) and the LS-fitted stitching layers perturbed -- chosen from the
    model itself, not from the palette's ``task_tensors``, so a tensor the palette skipped would show."""
    cfg = TuningConfig(rank=2) if method == "esta" else TuningConfig(mode="full")
    torch.manual_seed(0)
    model = assemble(SPECS, NUM_CLASSES, files, None, cfg)
    return perturb_as_trained(model)


def table() -> pd.DataFrame:
    stitches = family_table(SPECS, NUM_CLASSES)
    dep = pd.DataFrame(dict(stitch_id=DEPLOYED, interval=range(len(DEPLOYED)), score=np.linspace(1, 2, len(DEPLOYED)),
                            reason="interval", dominated=[s in DOMINATED for s in DEPLOYED]))
    latency = pd.DataFrame([dict(stitch_id=s, batch=b, median_ms=float(s + 1) * b) for s in DEPLOYED for b in (1, 32)])
    test = pd.DataFrame(dict(stitch_id=stitches["stitch_id"], test_accuracy=np.linspace(0, 1, len(stitches))))
    return stitch_table(stitches, dep, latency, test)


def accuracy_table() -> pd.DataFrame:
    """``table`` with measured accuracies that do not rise with cost: stitch 7 (mid-cost) is the most
    accurate, and 20 (the most expensive deployed) below 1 -- the case a score-based pick gets wrong."""
    t = table()
    acc = {0: 0.30, 1: 0.40, 2: 0.55, 7: 0.80, 15: 0.60, 20: 0.70}
    t["accuracy"] = t["test_accuracy"] = t["stitch_id"].map(acc)
    return t


@pytest.fixture(scope="module")
def palettes(tmp_path_factory):
    """ESTA and SN-Net palettes of the tiny family, their trained models and the anchor files."""
    root = tmp_path_factory.mktemp("palettes")
    files = []
    for i, vit in enumerate(make_anchors()):
        files.append(root / f"anchor{i}.safetensors")
        save_tensors(vit.state_dict(), files[-1], dict(num_classes=NUM_CLASSES))
    out = {}
    for method in ("esta", "snnet"):
        model = trained(method, files)
        manifest = dict(num_classes=NUM_CLASSES, classes=CLASSES)
        folder = write(root / method / "palette", model, table(), fam=SPECS, method=method, tuning=model.cfg,
                       manifest=manifest,
                       transform=transform_record("embedded/digits", manifest, IMG, describe_transform()),
                       anchor_files=files if method == "esta" else [],
                       settings=dict(variant="default", task="embedded/digits", seed=0, trained_in="tuning"))
        out[method] = (folder, model)
    return out, files


CHILD = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import save_file
    from esta.vit.palette import load
    torch.set_num_threads(1)
    folder, images, out, export_dir = sys.argv[1:5]
    x = torch.load(images, weights_only=True)
    palette = load(folder)
    logits = {}
    for sid in palette.table["stitch_id"]:
        logits[str(sid)] = palette.select(stitch_id=int(sid))(x)
    save_file(logits, out)
    for sid in palette.table.loc[palette.table["deployed"], "stitch_id"]:
        palette.export(int(sid), export_dir)
""")


@pytest.mark.parametrize("method", ["esta", "snnet"])
def test_every_stitch_after_a_fresh_load_equals_the_trained_model_and_the_export(palettes, method, tmp_path):
    (folders, _) = palettes
    folder, model = folders[method]
    x = make_images(4)
    torch.save(x, tmp_path / "x.pt")
    cmd = [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "out.safetensors"),
           str(tmp_path / "export")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    assert len(got) == model.net.num_stitches == 23
    with torch.no_grad():
        for sid in range(model.net.num_stitches):
            ref = model(x, sid)
            assert (got[str(sid)] - ref).abs().max() <= 1e-5, sid
        for sid in DEPLOYED:  # the palette's export is the workflow's export, tensor for tensor
            mine = load_file(tmp_path / "export" / f"stitch_{sid:03d}.safetensors")
            theirs = export_stitch(model, sid, tmp_path / "workflow", anchor_arch(SPECS))
            assert mine.keys() == load_file(theirs.with_suffix(".safetensors")).keys()
            for k, v in load_file(theirs.with_suffix(".safetensors")).items():
                assert torch.equal(mine[k], v), (sid, k)
            assert (load_stitch(tmp_path / "export" / f"stitch_{sid:03d}.json")(x) - model(x, sid)).abs().max() <= 1e-5
        # without the palette's tensors the logits would be far off: the copy is what makes them equal
        untrained = assemble(SPECS, NUM_CLASSES, palettes[1], None, model.cfg).eval()
        assert (untrained(x, 3) - model(x, 3)).abs().max() > 1e-2


def test_the_palette_holds_the_task_tensors_only(palettes):
    (folders, files) = palettes
    esta = load_file(folders["esta"][0] / TENSORS)
    snnet = load_file(folders["snnet"][0] / TENSORS)
    model = folders["esta"][1]
    frozen_anchor = [n for n, p in model.named_parameters() if n.startswith("net.anchors.") and not p.requires_grad]
    assert frozen_anchor and not set(frozen_anchor) & set(esta)  # the pretrained anchors are not copied
    assert {k for k in esta if k.startswith("net.stitch_layers.") and "lora_" not in k}  # LS-fitted layers are
    assert any(k.startswith("biases.") for k in esta) and any("lora_B" in k for k in esta)
    assert set(snnet) == {n for n, _ in folders["snnet"][1].named_parameters()}  # SN-Net: everything
    assert sum(v.numel() for v in esta.values()) < sum(v.numel() for v in snnet.values()) / 2
    for method, stored in (("esta", esta), ("snnet", snnet)):  # every trained value, as trained
        trainable = folders[method][1].trainable()
        assert set(trainable) <= set(stored)
        assert all(torch.equal(stored[k], v.detach()) for k, v in trainable.items())


@pytest.mark.parametrize("method", ["esta", "snnet"])
def test_select_moves_only_the_active_stitchs_biases_and_every_stitch_equals_its_export(palettes, method, tmp_path):
    folder, model = palettes[0][method]
    palette = load(folder)
    assert not any("lora_" in k for k in palette.model.state_dict())  # the shared LoRA is merged away
    x = make_images(3)
    net_params = dict(palette.model.net.named_parameters())
    exports = {}
    order = [3, 3, 22, 0, 11, 3, 20, 1, 22, 7, 15, 2]  # repeats, anchors and stitches, back and forth
    for sid in order:
        before = {k: v.clone() for k, v in net_params.items()}
        palette.select(stitch_id=sid)
        moved = {k for k, v in net_params.items() if not torch.equal(before[k], v)}
        own = {k.replace(":", ".").replace(".base_layer.", ".") for k in model.biases_for(sid)} if method == "esta" else set()
        assert moved <= own, (sid, sorted(moved - own)[:3])  # nothing but the stitch's own biases
        assert all(k.endswith(".bias") for k in moved)
        if sid not in exports:
            exports[sid] = load_stitch(palette.export(sid, tmp_path / "export"))
        with torch.no_grad():
            got = palette(x)
            assert (got - exports[sid](x)).abs().max() <= 1e-5, sid
            assert (got - model(x, sid)).abs().max() <= 1e-5, sid


def test_a_budget_serves_the_most_accurate_measured_stitch_within_it():
    t = accuracy_table()
    assert choose(t) == 7  # unlimited: the most accurate deployed stitch, not the most expensive (20)
    gmacs = t.set_index("stitch_id")["gmacs"]
    for sid in DEPLOYED:  # a budget exactly at a deployed stitch's cost: the most accurate that fits
        fits = [s for s in DEPLOYED if gmacs[s] <= gmacs[sid]]
        assert choose(t, max_gmacs=gmacs[sid]) == max(fits, key=lambda s: t.set_index("stitch_id").loc[s, "accuracy"])
    lat = t.set_index("stitch_id")["latency_ms_b1"]
    assert choose(t, max_latency_ms=lat[2]) == 2 and choose(t, max_latency_ms=lat[15]) == 7
    tie = t.assign(accuracy=0.5)  # equal accuracy: the training-time score breaks the tie
    assert choose(tie) == int(tie.loc[tie["deployed"]].sort_values("score").iloc[-1]["stitch_id"])
    unmeasured = t.assign(accuracy=float("nan"))  # nothing measured: the score decides alone
    assert choose(unmeasured) == int(t.loc[t["deployed"]].sort_values("score").iloc[-1]["stitch_id"])
    assert choose(t, stitch_id=5) == 5  # any stitch of the palette, deployed or not
    with pytest.raises(PaletteError, match="unknown stitch id 99.*0..22"):
        choose(t, stitch_id=99)
    with pytest.raises(PaletteError, match=r"max_gmacs = 1e-09 is below the cheapest deployed stitch \(id 0"):
        choose(t, max_gmacs=1e-9)
    with pytest.raises(PaletteError, match="not both"):
        choose(t, stitch_id=1, max_gmacs=1.0)


def test_dominated_is_computed_on_measured_accuracy_and_the_scores_view_kept_apart():
    stitches = family_table(SPECS, NUM_CLASSES)
    dep = pd.DataFrame(dict(stitch_id=DEPLOYED, interval=range(len(DEPLOYED)), score=np.linspace(1, 2, len(DEPLOYED)),
                            dominated=[s in DOMINATED for s in DEPLOYED]))
    acc = {0: 0.30, 1: 0.40, 2: 0.55, 7: 0.80, 15: 0.60, 20: 0.70}
    sel = pd.DataFrame(dict(stitch_id=list(acc), selection_accuracy=list(acc.values())))
    test = pd.DataFrame(dict(stitch_id=stitches["stitch_id"], test_accuracy=0.1))
    t = stitch_table(stitches, dep, None, test, sel).set_index("stitch_id")
    gmacs = t["gmacs"]
    for s in DEPLOYED:  # dominated: a deployed stitch no more expensive and at least as accurate
        assert t.loc[s, "dominated"] == any(gmacs[o] <= gmacs[s] and acc[o] >= acc[s] and (o != s) for o in DEPLOYED)
    assert t.loc[20, "dominated"] and not t.loc[7, "dominated"]
    assert t.loc[15, "score_dominated"] and not t.loc[20, "score_dominated"]  # the run's own view, kept
    assert (t.loc[DEPLOYED, "accuracy_split"] == "selection").all() and t.loc[DEPLOYED, "accuracy"].tolist() == \
        [acc[s] for s in DEPLOYED]
    assert (t.loc[~t["deployed"], "accuracy_split"] == "test").all()  # where no selection accuracy: test
    assert t.loc[~t["deployed"], "dominated"].isna().all()


def test_table_carries_latency_accuracy_and_leaves_unknown_domination_empty():
    t = table()
    assert t["deployed"].sum() == len(DEPLOYED)
    assert t.loc[t["stitch_id"] == 7, "latency_ms_b32"].item() == 8 * 32
    assert t.loc[~t["deployed"], "latency_ms_b1"].isna().all()
    stitches = family_table(SPECS, NUM_CLASSES)
    plain = stitch_table(stitches, pd.DataFrame(dict(stitch_id=[0, 1], score=[1.0, 2.0], interval=[0, 1])))
    assert plain["score_dominated"].isna().all() and plain["test_accuracy"].isna().all()
    assert plain["dominated"].isna().all() and (plain["accuracy_split"] == "").all()


def write_pngs(folder, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (24 + 4 * i, 20, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_predict_applies_the_task_transform_to_paths_pil_and_tensors(palettes, tmp_path):
    folder, model = palettes[0]["esta"]
    paths = write_pngs(tmp_path)
    palette = load(folder).select(stitch_id=9)
    pred = palette.predict(paths, batch_size=2)
    x = torch.stack([eval_transform(IMG)(load_rgb(p)) for p in paths])
    prob = model(x, 9).softmax(-1)
    assert pred["class"].tolist() == [CLASSES[i] for i in prob.argmax(-1)]
    assert np.allclose(pred["probability"], prob.max(-1).values.detach().numpy(), atol=1e-6)
    assert (pred["stitch_id"] == 9).all() and pred["image"].tolist() == [str(p) for p in paths]
    pil = palette.predict([Image.open(p) for p in paths])
    uint8 = torch.from_numpy(np.array(load_rgb(paths[0]))).permute(2, 0, 1)  # (3, H, W)
    tensors = palette.predict(uint8[None])
    assert pil["class"].tolist() == pred["class"].tolist()
    assert tensors["probability"][0] == pytest.approx(pred["probability"][0], abs=1e-6)


def test_cli_palette_and_predict(palettes, tmp_path, capsys):
    folder, model = palettes[0]["esta"]
    paths = write_pngs(tmp_path, 2)
    assert main(["palette", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "23 stitches, 6 deployed" in out and "latency_ms_b32" in out and "T0 (" in out
    assert main(["predict", str(folder), "--stitch-id", "12", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expect = load(folder).select(stitch_id=12).predict(paths)
    assert lines == [f"{p}\t{c}\t{q:.4f}\tstitch 12" for p, c, q in zip(expect["image"], expect["class"],
                                                                        expect["probability"])]
    t = table()
    gmacs = t.set_index("stitch_id")["gmacs"]
    assert main(["predict", str(folder), "--max-gmacs", str(gmacs[7]), str(paths[0])]) == 0
    assert capsys.readouterr().out.strip().endswith(f"stitch {choose(t, max_gmacs=gmacs[7])}")
    assert main(["predict", str(folder), "--max-latency-ms", "3.5", str(paths[0])]) == 0
    assert capsys.readouterr().out.strip().endswith("stitch 2")  # latencies 1, 2, 3 ms for ids 0, 1, 2
    # options after the positionals, and between them
    assert main(["predict", str(folder), str(paths[0]), "--stitch-id", "12", str(paths[1]), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == lines


@pytest.mark.parametrize("args, message", [
    (["--stitch-id", "99"], "unknown stitch id 99"),
    (["--max-gmacs", "1e-9"], "max_gmacs = 1e-09 is below the cheapest deployed stitch"),
    (["--max-latency-ms", "0.5"], "max_latency_ms = 0.5 is below the cheapest deployed stitch (id 0, latency_ms_b1 1)"),
])
def test_cli_bad_budget_or_id_is_one_clear_error(palettes, tmp_path, capsys, args, message):
    png = write_pngs(tmp_path, 1)[0]
    assert main(["predict", str(palettes[0]["esta"][0]), *args, str(png)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_cli_unreadable_image_is_named(palettes, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    good = write_pngs(tmp_path, 1)[0]
    assert main(["predict", str(palettes[0]["esta"][0]), str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"unreadable image {bad}" in err and len(err.splitlines()) == 1


def test_bundle_makes_a_self_contained_folder_and_a_changed_anchor_is_refused(palettes, tmp_path, capsys):
    folder = shutil.copytree(palettes[0]["esta"][0], tmp_path / "moved" / "palette")  # its anchor paths break
    with pytest.raises(PaletteError, match=r"anchors\[0\] \(T0\): .* is missing"):
        load(folder)
    anchors = [a for f in palettes[1] for a in ("--anchors", str(f))]
    assert main(["palette", "--bundle", *anchors, str(folder)]) == 0  # options before the positional
    assert "bundled 3 anchors" in capsys.readouterr().err
    x = make_images(2)
    ref = palettes[0]["esta"][1](x, 4)
    assert (load(folder).select(stitch_id=4)(x) - ref).abs().max() <= 1e-5  # anchors found in anchors/
    assert sorted(p.name for p in (folder / "anchors").iterdir()) == ["T0.safetensors", "T1.safetensors",
                                                                       "T2.safetensors"]  # the records' names
    with open(folder / "anchors" / "T1.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert main(["predict", str(folder), "--stitch-id", "4", str(write_pngs(tmp_path, 1)[0])]) == 2
    err = capsys.readouterr().err
    assert "anchors[1] (T1):" in err and "T1.safetensors has sha256" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# The smoke workflow's palettes (config/smoke.yaml, one session run): written by the rules, loaded in a
# fresh process, every stitch equals the trained model, and the deployed ones the workflow's exports.

FRESH = textwrap.dedent("""
    import sys, torch
    from safetensors.torch import load_file, save_file
    from esta.__main__ import load_palette
    torch.set_num_threads(1)
    folder, inputs, out, export_dir = sys.argv[1:5]
    args = [v for _, v in sorted(load_file(inputs).items())]
    palette = load_palette(folder)
    save_file({str(s): palette.select(stitch_id=int(s))(*args) for s in palette.table["stitch_id"]}, out)
    for sid in palette.table.loc[palette.table["deployed"], "stitch_id"]:
        palette.export(int(sid), export_dir)
""")


def fresh_logits(folder, inputs: dict, tmp_path) -> dict:
    save_file(inputs, tmp_path / "inputs.safetensors")
    cmd = [sys.executable, "-c", FRESH, str(folder), str(tmp_path / "inputs.safetensors"),
           str(tmp_path / "out.safetensors"), str(tmp_path / "export")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(tmp_path / "out.safetensors")


SMOKE = ROOT / "config" / "smoke.yaml"


@pytest.mark.parametrize("method", ["esta", "snnet"])
def test_smoke_vit_palette_equals_the_trained_model_and_the_exports(smoke, method, tmp_path):
    import yaml

    from esta.vit.anchors import family_at
    from esta.vit.build import open_task, read_manifest, tuning_config

    cfg = yaml.safe_load(SMOKE.read_text())
    task = cfg["tasks"][0]
    run = smoke / method / "default" / task / "seed0" / "tuning"
    anchors = [(smoke / "anchors" / cfg["family"] if method == "esta" else run / "adapt") / f"anchor{i}.safetensors"
               for i in range(3)]
    manifest = read_manifest(smoke / "data" / task / "manifest.json")
    model = assemble(family_at(cfg["family"], cfg["data"]["img_size"]), manifest["num_classes"], anchors,
                     run / "stitch_init.safetensors", tuning_config(method, cfg[method]),
                     state_file=run / "model.safetensors")
    x = open_task(manifest, "test", cfg["data"]["img_size"]).tensors[0][:8]
    got = fresh_logits(smoke / method / "default" / task / "palette" / "seed0", dict(x=x), tmp_path)
    with torch.no_grad():
        assert len(got) == model.net.num_stitches
        for sid in range(model.net.num_stitches):
            assert (got[str(sid)] - model.eval()(x, sid)).abs().max() <= 1e-5, sid
    index = pd.read_csv(smoke / method / "default" / task / "deployed" / "seed0" / "index.csv")
    exported = smoke / method / "default" / task / "deployed" / "seed0"
    for f in index["file"]:  # the palette's exports are the workflow's, tensor for tensor
        theirs = load_file(exported / Path(f).with_suffix(".safetensors"))
        mine = load_file(tmp_path / "export" / Path(f).with_suffix(".safetensors"))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], v) for k, v in theirs.items()), f


def test_smoke_llm_palette_equals_the_trained_model_and_the_exports(smoke, tmp_path):
    import yaml

    from esta.llm.export import load_stitch as load_llm_stitch
    from test_llm_stitch import left_padded_batch

    llm = yaml.safe_load(SMOKE.read_text())["llm"]
    L = smoke / "llm"
    net, tok = stitched([L / "anchors" / f"anchor{i}" for i in range(2)], llm["dtype"],
                        stitch_init=L / "stitch_init.safetensors", rule=llm["rule"])
    model = assemble_llm(net, llm["pst"], L / "esta" / "default" / "seed0" / "model.safetensors").eval()
    ids, mask = left_padded_batch(3)
    got = fresh_logits(L / "esta" / "default" / "seed0" / "palette", dict(a_ids=ids, b_mask=mask), tmp_path)
    with torch.no_grad():
        for sid in range(model.num_stitches):
            assert (got[str(sid)] - model(ids, mask, sid)).abs().max() <= 1e-5, sid
        for sid in pd.read_csv(L / "esta" / "default" / "seed0" / "deployed.csv")["stitch_id"]:
            theirs, _ = load_llm_stitch(L / "esta" / "default" / "seed0" / "deployed" / f"stitch{sid}")
            assert (theirs(ids, mask) - got[str(sid)]).abs().max() <= 1e-5, sid
            mine, _ = load_llm_stitch(tmp_path / "export" / f"stitch{sid}")
            assert (mine(ids, mask) - got[str(sid)]).abs().max() <= 1e-5


def test_smoke_latency_and_storage_tables(smoke):
    import yaml

    cfg = yaml.safe_load(SMOKE.read_text())
    latency = pd.read_csv(smoke / "tables" / "latency.csv")
    assert (latency["median_ms"] > 0).all() and (latency["torch_threads"] == cfg["threads"]).all()
    assert set(latency["runtime"]) == {"torch"}  # ESTA and SN-Net through one path: the served palette
    for (method, task), g in latency[latency["family"] != "llm"].groupby(["method", "task"]):
        deployed = pd.read_csv(smoke / method / "default" / task / "seed0" / "tuning" / "deployed.csv")
        assert set(g["stitch_id"]) == set(deployed["stitch_id"]) and set(g["batch"]) == {1, 32}
        table = pd.read_csv(smoke / method / "default" / task / "palette" / "seed0" / "stitches.csv")
        lat = g[g["batch"] == 1].set_index("stitch_id")["median_ms"]
        assert np.allclose(table.set_index("stitch_id").loc[lat.index, "latency_ms_b1"], lat)  # the palette carries it
        assert table.loc[table["deployed"], "test_accuracy"].notna().all()
    assert set(latency.loc[latency["family"] == "llm", "batch"]) == {1, 32}
    storage = pd.read_csv(smoke / "tables" / "storage.csv")
    paper = storage[storage["scope"] != "run"].set_index("method")
    # ViT-Ti/S/B, 100 classes, r = 8: PST trains 4,689,020 and its palette adds the 22 LS-fitted stitching
    # layers (4,067,712); SN-Net stores everything it trains
    assert paper.loc["esta", "trainable_params"] == 4_689_020
    assert paper.loc["esta", "palette_params"] == 4_689_020 + 11 * (192 * 384 + 384) + 11 * (384 * 768 + 768)
    assert paper.loc["snnet", "palette_params"] == paper.loc["snnet", "trainable_params"] == 117_191_148
    run = storage[(storage["scope"] == "run") & (storage["family"] != "llm")]
    per_task = run.groupby("method")["palette_bytes"].mean()
    assert per_task["esta"] < per_task["snnet"] / 5
    assert (run["palette_bytes"] >= run["tensors_bytes"]).all() and (run["n_exports"] > 0).all()
    assert (storage.loc[storage["family"] == "llm", "palette_params"] > 0).all()


def smoke_vit_palettes(smoke) -> list[Path]:
    import yaml

    cfg = yaml.safe_load(SMOKE.read_text())
    return [smoke / m / "default" / t / "palette" / "seed0" for m in ("esta", "snnet") for t in cfg["tasks"]]


def test_smoke_unlimited_budget_serves_the_most_accurate_measured_stitch(smoke):
    from esta.palette import read_table

    for folder in [*smoke_vit_palettes(smoke), smoke / "llm" / "esta" / "default" / "seed0" / "palette"]:
        t = read_table(folder)
        dep = t[t["deployed"] & t["accuracy"].notna()]
        assert len(dep), folder
        best = set(dep.loc[dep["accuracy"] == dep["accuracy"].max(), "stitch_id"])
        assert choose(t) in best, folder
        dominated = t.loc[t["deployed"], "dominated"]
        assert dominated.notna().all() and not dominated[list(best)].all(), folder  # one best is undominated


def test_smoke_onnx_equals_the_palette_for_every_deployed_stitch(smoke, tmp_path, monkeypatch):
    import onnxruntime as ort
    import yaml

    from esta.vit.build import open_task, read_manifest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = yaml.safe_load(SMOKE.read_text())
    task = cfg["tasks"][0]
    x = open_task(read_manifest(smoke / "data" / task / "manifest.json"), "test", cfg["data"]["img_size"]).tensors[0][:5]
    for method in ("esta", "snnet"):
        palette = load(smoke / method / "default" / task / "palette" / "seed0")
        for sid in palette.table.loc[palette.table["deployed"], "stitch_id"]:
            path = palette.export(int(sid), tmp_path / method, format="onnx")
            got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
            with torch.no_grad():
                assert (torch.from_numpy(got) - palette.select(stitch_id=int(sid))(x)).abs().max() <= 1e-4, (method, sid)


def test_smoke_second_load_of_a_bundled_palette_hashes_nothing(smoke, tmp_path, monkeypatch):
    import esta.hashcache
    from esta.palette import bundle

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for src in (smoke_vit_palettes(smoke)[0], smoke / "llm" / "esta" / "default" / "seed0" / "palette"):
        folder = shutil.copytree(src, tmp_path / src.parts[-3] / "palette", copy_function=os.link)
        import json

        meta = json.loads((src / "palette.json").read_text())
        bundle(folder, [(src / a["path"]).resolve() for a in meta["anchors"]])
        from esta.__main__ import load_palette

        load_palette(folder)
        hashed = []
        real = esta.hashcache.runtime.file_digest
        monkeypatch.setattr(esta.hashcache.runtime, "file_digest", lambda p: hashed.append(p) or real(p))
        load_palette(folder)
        assert hashed == [], folder  # counted, not timed
        monkeypatch.undo()
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
