"""Your own data and your own model family through the workflow (spec §13), in one shared run:
config/smoke.yaml with an ImageFolder tree and a parquet folder of Hugging Face ``datasets`` as tasks
custom/<name>, stitched over a tiny ViT-S/B/L-shaped timm family of depths 2/2/4 (the depth rule)
loaded from .safetensors, .pth and .bin files. (The save_to_disk forms go through the same
register_data and open_task calls in tests/test_custom_data.py, which reads all three forms alike.)
Bad data fails in register_data before any training job; a family that cannot be stitched is
refused before any job."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, make_workdir, snakemake

from esta.stitches import enumerate_stitches

pytestmark = pytest.mark.workflow

SMOKE = ROOT / "config" / "smoke.yaml"
# ViT-S/B/L shapes at toy size: 32 px, patch 8, head dim 16, depths 2/2/4 (so the depth rule)
TINY = [("S", "vit_small_patch16_224", 48, 2), ("B", "vit_base_patch16_224", 96, 2),
        ("L", "vit_large_patch16_224", 144, 4)]
WEIGHT_FILES = ["small.safetensors", "base.pth", "large.bin"]


def tiny_family() -> list[dict]:
    return [dict(name=name, label=label,
                 kwargs=dict(img_size=32, patch_size=8, embed_dim=w, depth=d, num_heads=w // 16))
            for label, name, w, d in TINY]


def write_tiny_weights(folder) -> None:
    """Random-init timm models saved three ways: safetensors, a torch.save'd {"model": state dict}
    (the DeiT release layout) and a plain state dict in .bin; heads of 11 classes."""
    import timm
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for (label, name, w, d), file in zip(TINY, WEIGHT_FILES):
        torch.manual_seed(w)
        sd = timm.create_model(name, num_classes=11, img_size=32, patch_size=8, embed_dim=w, depth=d,
                               num_heads=w // 16).state_dict()
        if file.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / file))
        else:
            torch.save({"model": sd} if file.endswith(".pth") else sd, folder / file)


def override(root, datasets: dict, tasks: list[str]) -> dict:
    return dict(family="timm", tasks=tasks, weights_root=str(root / "weights"), datasets=datasets,
                anchors=dict(yaml.safe_load(SMOKE.read_text())["anchors"], source="files", weights=WEIGHT_FILES,
                             timm=tiny_family()),
                ablations=dict(yaml.safe_load(SMOKE.read_text())["ablations"], tasks=tasks[:1]))


def config_args(root, over: dict) -> tuple[str, ...]:
    path = root / "override.yaml"
    path.write_text(yaml.safe_dump(over))
    return "--configfile", str(SMOKE), str(path)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory):
    """One run to the suite figure over both data sources and the timm family (about 2 minutes on 2 cores:
    36 jobs, each mostly importing torch, timm and peft)."""
    from fixtures import write_hf_fixture, write_imagefolder_fixture

    root = tmp_path_factory.mktemp("custom")
    cache = os.environ.get("HF_DATASETS_CACHE")
    os.environ["HF_DATASETS_CACHE"] = str(root / "hf-cache")  # the jobs inherit it: no writes to ~/.cache
    write_imagefolder_fixture(root / "pets", classes=("cat", "dog", "eel"), n=(10, 4, 5))
    write_hf_fixture(root / "bees", form="parquet", classes=("ant", "bee", "cow", "doe"), image_key="img",
                     label_key="target", n=(24, 9))
    write_tiny_weights(root / "weights")
    datasets = dict(pets=dict(source="imagefolder", path=str(root / "pets"), group="Pets"),
                    bees=dict(source="hf", path=str(root / "bees"), image_key="img", label_key="target",
                              val_frac=0.25, transform="fgvc"))
    tasks = ["custom/pets", "custom/bees"]
    args = config_args(root, override(root, datasets, tasks))
    work = make_workdir(root / "work")
    try:
        snakemake(work, "results/figures/pareto_all.pdf", "--cores", "2", *args, timeout=1200)
    finally:
        if cache is None:
            del os.environ["HF_DATASETS_CACHE"]
        else:
            os.environ["HF_DATASETS_CACHE"] = cache
    return work / "results", root, tasks


def test_custom_data_and_timm_family_reach_the_suite_figure(custom_run):
    res, root, tasks = custom_run
    assert (res / "figures" / "pareto_all.pdf").stat().st_size > 1000
    stitches = pd.read_csv(res / "tables" / "stitches.csv")
    table = enumerate_stitches([2, 2, 4], [48, 96, 144])  # unequal depths: the depth rule
    assert list(zip(stitches["front"], stitches["end"], stitches["j"], stitches["k"])) == \
        [(s.front, s.end, s.j, s.k) for s in table]
    assert list(stitches["name"][:3]) == ["S", "B", "L"]
    deployed = pd.read_csv(res / "tables" / "deployed.csv")
    assert set(deployed["task"]) == set(tasks) and set(deployed["method"]) == {"esta", "snnet"}
    assert deployed["test_accuracy"].between(0, 1).all()
    # config datasets.<name>.group, else Custom
    assert deployed.groupby("task")["group"].unique().map(list).to_dict() == {"custom/pets": ["Pets"],
                                                                                "custom/bees": ["Custom"]}
    assert set(deployed["stitch_id"]) <= set(stitches["stitch_id"])


def test_custom_manifests_describe_each_data_set(custom_run):
    res, root, _ = custom_run
    pets = json.loads((res / "data" / "custom" / "pets" / "manifest.json").read_text())
    assert pets["classes"] == ["cat", "dog", "eel"] and pets["splits"]["trainval"] == 42
    assert pets["skipped"]["train"] == {"hidden": 4, "non_image": 3, "unfiled": 1}
    bees = json.loads((res / "data" / "custom" / "bees" / "manifest.json").read_text())
    assert bees["classes"] == ["ant", "bee", "cow", "doe"] and bees["transform"] == "fgvc"
    assert bees["selection"] == {"source": "train", "name": "train", "val_frac": 0.25, "seed": 0}
    assert bees["splits"] == {"train": 18, "val": 6, "trainval": 24, "test": 9}
    assert set(bees["files"]) >= {"train.parquet", "test-00000-of-00001.parquet"}
    # each training run recorded the data it trained on (the manifest's identity) and its transform
    for task, m in (("custom/pets", pets), ("custom/bees", bees)):
        info = json.loads((res / "esta" / "default" / task / "seed0" / "tuning" / "train.json").read_text())
        assert info["task"] == task and info["trainable_params"] > 0
    # each task's costs end in its own head, sized by its manifest: anchor S (width 48), 4 classes vs 3
    params = {task: pd.read_csv(res / "esta" / "default" / task / "metrics.csv").set_index("stitch_id").loc[0, "params"]
              for task in ("custom/pets", "custom/bees")}
    assert params["custom/bees"] - params["custom/pets"] == 48 + 1


def test_timm_anchors_registered_from_three_file_formats(custom_run):
    res, root, _ = custom_run
    for i, file in enumerate(WEIGHT_FILES):
        info = json.loads((res / "anchors" / "timm" / f"anchor{i}.json").read_text())
        assert info["source"]["file"] == str((root / "weights" / file).resolve())
        assert info["num_classes"] == 11  # the head size stored in the file, whatever the timm cfg says
        assert info["timm_name"] == TINY[i][1] and info["kwargs"]["depth"] == TINY[i][3]


def test_rerun_is_a_no_op(custom_run):
    res, root, tasks = custom_run
    args = config_args(root, yaml.safe_load((root / "override.yaml").read_text()))
    out = snakemake(res.parent, "results/figures/pareto_all.pdf", "-n", *args).stdout
    assert "Nothing to be done" in out
    image = next((root / "pets" / "test" / "cat").glob("cat_*"))
    new = image.with_name("new" + image.suffix)
    new.write_bytes(image.read_bytes())
    try:  # a new image reruns the registration of that data set (and what depends on it) only
        out = snakemake(res.parent, "results/figures/pareto_all.pdf", "-n", *args).stdout
        assert "register_data" in out and "results/data/custom/pets/manifest.json" in out
        assert "custom/bees/manifest.json" not in out
    finally:
        new.unlink()


def test_bad_data_fails_in_register_data_before_any_training(custom_run, tmp_path):
    """In the shared run's folder (its anchors are registered), a task whose class folder is missing
    from the test split fails in register_data, naming the folder, and no training job starts."""
    from fixtures import write_imagefolder_fixture

    res, root, _ = custom_run
    bad = write_imagefolder_fixture(tmp_path / "moths")
    (bad / "test" / "eel").rename(tmp_path / "eel")  # a class in train and val only
    over = yaml.safe_load((root / "override.yaml").read_text())
    over.update(tasks=["custom/moths"], datasets={"moths": dict(source="imagefolder", path=str(bad))})
    over["ablations"]["tasks"] = ["custom/moths"]
    logs = res / "logs"
    before = set(logs.rglob("*.log"))
    proc = snakemake(res.parent, "results/figures/pareto_all.pdf", "--cores", "2", *config_args(tmp_path, over),
                     check=False)
    assert proc.returncode != 0
    log = (logs / "register_data" / "custom" / "moths.log").read_text()
    assert f"ValueError: class folder {bad}/training/eel has no counterpart {bad}/test/eel" in log
    new = {p.relative_to(logs).parts[0] for p in set(logs.rglob("*.log")) - before}
    assert new == {"register_data"}, new  # nothing else ran: no anchor, no training job
    assert not (res / "data" / "custom" / "moths" / "manifest.json").exists()


def test_unstitchable_family_is_refused_before_any_job(tmp_path):
    """The other reasons are tests/test_timm_family.py's; here: the workflow stops before its first job."""
    models, culprit = ["deit_tiny_patch16_224", "deit_small_distilled_patch16_224"], "deit_small_distilled_patch16_224"
    over = dict(family="timm", weights_root=str(tmp_path),
                anchors=dict(yaml.safe_load(SMOKE.read_text())["anchors"], source="files", weights=["a", "b"],
                             timm=models))
    work = make_workdir(tmp_path / "work")
    proc = snakemake(work, "-n", *config_args(tmp_path, over), check=False)
    assert proc.returncode != 0 and f"timm anchor {culprit} ({culprit}) cannot be stitched" in proc.stderr + proc.stdout
    assert not (work / "results").exists()
