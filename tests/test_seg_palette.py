"""The segmentation palette (spec §12, §14; esta.vit.seg_palette): every stitch of a loaded seg palette
equals the trained segmenter and its standalone export, predict writes one colour-mapped mask PNG per
image at the image's size, and a tampered palette.json is refused before anything is built. On the
smoke run: the palette of each dense run equals its export for every deployed stitch and reproduces the
run's test mIoU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, perturb_as_trained
from PIL import Image

from esta.__main__ import main
from esta.palette import META, PaletteError, stitch_table
from esta.tensors import save_tensors
from esta.vit.anchors import build_anchor, family
from esta.vit.build import tuning_config
from esta.vit.export import load_stitch
from esta.vit.seg import assemble_seg, confusion, seg_costs, seg_scores
from esta.vit.seg_palette import class_colours, load, write

K, HIDDEN, PX = 5, 16, 32  # the embedded family at its native 32 px
ESTA = dict(lora=dict(rank=2, alpha=None, dropout=0.0, targets="attn"), stitch_biases=True,
            peft=dict(method="lora", adapter=dict(bottleneck=4), adaptformer=dict(bottleneck=4, scale=0.1)))
CLASSES = ["sky", "grass", "disk", "square", "ring"]
DEPLOYED = [0, 1, 2, 5, 9]


def trained(method: str, files):
    """A segmenter as after training: every parameter that trains and the stitching layers perturbed."""
    torch.manual_seed(0)
    model = assemble_seg("embedded", K, PX, HIDDEN, files, tuning_cfg=tuning_config(method, ESTA))
    return perturb_as_trained(model)


def table() -> pd.DataFrame:
    costs = seg_costs("embedded", K, PX, HIDDEN)
    dep = pd.DataFrame(dict(stitch_id=DEPLOYED, interval=range(len(DEPLOYED)), score=np.linspace(1, 2, len(DEPLOYED))))
    miou = pd.DataFrame(dict(stitch_id=costs["stitch_id"], test_accuracy=np.linspace(0.2, 0.6, len(costs))))
    return stitch_table(costs, dep, None, miou)


@pytest.fixture(scope="module")
def palettes(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg_palettes")
    files = []
    for i, spec in enumerate(family("embedded")):
        files.append(root / f"anchor{i}.safetensors")
        save_tensors(build_anchor(spec, 10).state_dict(), files[-1], dict(num_classes=10))
    out = {}
    for method in ("esta", "snnet"):
        model = trained(method, files if method == "esta" else None)
        transform = dict(kind="seg", img_size=PX, normalize="imagenet", mean=[0.485, 0.456, 0.406],
                         std=[0.229, 0.224, 0.225])
        folder = write(root / method, model, table(), fam="embedded", method=method, tuning=model.cfg,
                       manifest=dict(num_classes=K, classes=CLASSES, reduce_zero_label=True), transform=transform,
                       hidden=HIDDEN, anchor_files=files if method == "esta" else [],
                       settings=dict(variant="default", task="shapes", seed=0))
        out[method] = (folder, model)
    return out


@pytest.mark.parametrize("method", ["esta", "snnet"])
def test_every_stitch_equals_the_trained_segmenter_and_the_export(palettes, method, tmp_path):
    folder, model = palettes[method]
    palette = load(folder)
    assert palette.meta["kind"] == "seg" and palette.meta["metric"] == "miou"
    x = torch.randn(2, 3, PX, PX, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for sid in range(model.net.num_stitches):
            got = palette.select(stitch_id=sid)(x)
            assert got.shape == (2, K, PX, PX)
            torch.testing.assert_close(got, model(x, sid), atol=1e-5, rtol=0)
        for sid in DEPLOYED:
            standalone = load_stitch(palette.export(sid, tmp_path))
            torch.testing.assert_close(standalone(x), palette.select(stitch_id=sid)(x), atol=1e-5, rtol=0)


def test_class_colours_are_distinct_and_never_black():
    c = class_colours(150)
    assert len({tuple(rgb) for rgb in c}) == 150 and [0, 0, 0] not in c
    assert c[:3] == [[128, 0, 0], [0, 128, 0], [128, 128, 0]]  # PASCAL VOC's map from index 1
    with pytest.raises(ValueError, match="256 classes"):
        class_colours(256)


def test_predict_writes_one_colour_mapped_mask_per_image_at_its_size(palettes, tmp_path):
    folder, _ = palettes["esta"]
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(32, 32), (52, 40), (20, 27)]):
        paths.append(tmp_path / "in" / f"scene{i}.jpg")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    palette = load(folder).select(stitch_id=5)
    rows = palette.predict(paths, batch_size=2, out_dir=tmp_path / "masks")
    colours = palette.meta["colours"]
    assert colours == class_colours(K)
    for path, row in zip(paths, rows.itertuples()):
        im = Image.open(path)
        png = Image.open(row.mask)
        assert row.mask == str(tmp_path / "masks" / f"{path.stem}.png") and row.stitch_id == 5
        assert png.mode == "P" and png.size == im.size == (row.width, row.height)
        idx = np.asarray(png)
        # the mask is the argmax of the logits upsampled to the image: recomputed here by hand
        from esta.vit.seg_palette import _prepare

        logits = palette(_prepare(palette.meta, im.convert("RGB"))[None])
        expect = F.interpolate(logits, size=im.size[::-1], mode="bilinear", align_corners=False)[0].argmax(0)
        assert (idx == expect.numpy()).all()
        rgb = np.asarray(png.convert("RGB")).reshape(-1, 3)
        assert {tuple(c) for c in np.unique(rgb, axis=0)} <= {tuple(c) for c in colours}
        assert (rgb == np.asarray(colours)[idx.reshape(-1)]).all()


def test_cli_predict_writes_masks_and_refuses_without_a_folder(palettes, tmp_path, capsys):
    folder, _ = palettes["snnet"]
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(img)
    assert main(["predict", str(folder), str(img), "--stitch-id", "2", "--out-dir", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{img}\t{tmp_path / 'm' / 'a.png'}\t30x24\tstitch 2")
    assert Image.open(tmp_path / "m" / "a.png").size == (30, 24)
    assert main(["predict", str(folder), str(img)]) == 2
    assert "give an output folder" in capsys.readouterr().err


def test_a_classification_palette_refuses_a_mask_folder(palettes, tmp_path):
    folder, _ = palettes["esta"]
    palette = load(folder)
    import esta.vit.palette as vit_family

    palette._family = vit_family  # what a classification palette runs with
    with pytest.raises(PaletteError, match="writes no masks"):
        palette.predict([], out_dir=tmp_path)


def _edit(src, dest, edit):
    import shutil

    shutil.copytree(src, dest)
    meta = json.loads((dest / META).read_text())
    edit(meta)
    (dest / META).write_text(json.dumps(meta))
    return dest


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["colours"].pop(), "field colours: 4 entries for num_classes 5"),
    (lambda m: m["colours"][0].__setitem__(0, 300), "field colours/0/0"),
    (lambda m: m["classes"].append("x"), "field classes: 6 names"),
    (lambda m: m.update(num_classes=300), "field num_classes"),
    (lambda m: m.update(metric="accuracy"), "field metric"),
    (lambda m: m["seg"].update(hidden="16; import os"), "field seg/hidden"),
    (lambda m: m["transform"].update(kind="fgvc"), "field transform/kind"),
    (lambda m: m.update(family=[dict(name="a", timm_name="vit_tiny_patch16_224", pretrained_classes=0,
                                     kwargs=dict(checkpoint_path="/etc/passwd"))] * 3), "field family"),
    (lambda m: m["anchors"].pop(), "must name 3 pretrained anchors"),
])
def test_a_tampered_seg_palette_json_is_refused_naming_the_field(palettes, tmp_path, capsys, monkeypatch, edit,
                                                                 message):
    import esta.vit.seg as seg

    built = []
    monkeypatch.setattr(seg, "assemble_seg", lambda *a, **k: built.append(a))
    folder = _edit(palettes["esta"][0], tmp_path / "p", edit)
    with pytest.raises(PaletteError, match=message.replace("[", r"\[")) as err:
        load(folder)
    assert str(folder / META) in str(err.value) and built == []
    assert main(["predict", str(folder), str(ROOT / "README.md"), "--out-dir", str(tmp_path / "m")]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The smoke run's seg palettes


@pytest.mark.parametrize("method", ["esta", "snnet"])
def test_smoke_seg_palette_equals_its_exports_and_reproduces_the_run_miou(smoke, method, tmp_path):
    import yaml

    from esta.vit.build import read_manifest
    from esta.vit.seg_data import open_dense

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    d = cfg["dense"]
    run = smoke / method / "default" / "dense" / "shapes" / "seed0" / "tuning"
    palette = load(run.parent.parent / "palette" / "seed0")
    table = palette.table
    deployed = table.loc[table["deployed"], "stitch_id"].tolist()
    assert set(deployed) == set(pd.read_csv(run / "deployed.csv")["stitch_id"])
    assert table.loc[table["deployed"], "latency_ms_b1"].gt(0).all()  # palette_latency measured them
    m = read_manifest(smoke / "data" / "dense" / "shapes" / "manifest.json")
    x, y = open_dense(m, "test", d, cfg["family"]).tensors
    logged = pd.read_csv(run / "stitch_accuracy_test.csv").set_index("stitch_id")
    for sid in deployed:
        standalone = load_stitch(palette.export(sid, tmp_path))
        with torch.no_grad():
            served = palette.select(stitch_id=sid)(x)
            torch.testing.assert_close(standalone(x), served, atol=1e-5, rtol=0)
        # the palette's own test mIoU over the test split is the run's
        got = seg_scores(confusion(served, y, m["num_classes"]))["miou"]
        assert got == pytest.approx(logged.loc[sid, "test_miou"], abs=1e-4), (method, sid)
        assert table.set_index("stitch_id").loc[sid, "test_accuracy"] == pytest.approx(logged.loc[sid, "test_miou"])
    # predict on the test images' files: masks at their size whose mIoU is the run's, for the best stitch
    sid = palette.select().stitch_id
    files = sorted((smoke / "data" / "dense" / "shapes" / "scenes" / "images" / "validation").glob("*.jpg"))
    rows = palette.predict(files, out_dir=tmp_path / "masks")
    pred = torch.stack([torch.from_numpy(np.asarray(Image.open(p)).astype(np.int64)) for p in rows["mask"]])
    one_hot = F.one_hot(pred, m["num_classes"]).permute(0, 3, 1, 2).float()  # confusion takes logits
    got = seg_scores(confusion(one_hot, y, m["num_classes"]))["miou"]
    assert got == pytest.approx(logged.loc[sid, "test_miou"], abs=1e-4)
