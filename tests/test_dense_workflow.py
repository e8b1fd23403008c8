"""Dense prediction in the workflow (spec §14): a dense task is task dense/<name> of the classification rules
(register_data, ls_init, snnet_adapt, train_esta, snnet_stitch, evaluate_stitches, select_esta,
snnet_deploy, palette), with only its tables and figures in rules/dense.smk. config/dense.yaml plans over a
tiny ADE20K-layout fixture and random-init ViT-Ti/S/B files, and runs end to end at small size; the smoke
run's dense tables hold what the figures need. The real runs are marked `workflow` (minutes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, make_workdir, snakemake

from esta.vit.seg_data import write_dense_task

DENSE = ("--configfile", str(ROOT / "config" / "dense.yaml"))
# config/dense.yaml at small size: 32 px inputs, a few steps, one seed
SMALL = """
seeds: [0]
threads: 1
dense:
  seeds: [0]
  img_size: 32
  head_hidden: 8
  selection_fraction: 0.25
  ls_init_images: 4
  eval_batch_size: 8
  deploy: {intervals: 13, score: loss_batch, min_visits: 0, loss_batch_examples: 4}
  esta:
    train: {epochs: 1, batch_size: 4, lr: 1.0e-3, lr_anchor: null, weight_decay: 0.0, warmup_epochs: 0,
            grad_checkpointing: true, decay_1d: false}
  snnet:
    adapt: {epochs: 1, batch_size: 4, lr: 1.0e-3, lr_anchor: 1.0e-4, weight_decay: 0.0, warmup_epochs: 0,
            grad_checkpointing: false, decay_1d: false}
    train: {epochs: 1, batch_size: 4, lr: 1.0e-3, lr_anchor: 1.0e-4, weight_decay: 0.0, warmup_epochs: 0,
            grad_checkpointing: false, decay_1d: false}
"""


def ade_fixture(root):
    """ADE20K's folder under a data root: 8 training and 4 validation scenes of the rendered task."""
    write_dense_task(root / "ADEChallengeData2016", 8, 4, 48, seed=1)


def test_dense_config_plans_ade20k_with_three_seeds(tmp_path):
    ade_fixture(tmp_path / "data")
    work = make_workdir(tmp_path / "work")
    out = snakemake(work, "-n", *DENSE, "--config", f"data_root={tmp_path / 'data'}", "--",
                    "results/figures/pareto_dense.pdf").stdout
    counts = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out, re.M)}
    # 3 seeds: each anchor adapted alone per seed, LS init / training / evaluation of both splits per
    # method and seed, one deployment per run: the classification rules on task dense/ade20k
    assert {k: v for k, v in counts.items() if k not in ("register_weights", "total")} == {
        "register_data": 1, "snnet_adapt": 9, "ls_init": 6, "train_esta": 3, "snnet_stitch": 3,
        "evaluate_stitches": 12, "select_esta": 3, "snnet_deploy": 3, "dense_tables": 1, "dense_plot": 1}
    assert "register_weights" in out and "dense_render" not in out
    assert "task=dense/ade20k" in out and "results/tables/pareto_all" not in out


def test_unknown_dense_task_fails_before_any_job(tmp_path):
    work = make_workdir(tmp_path / "work")
    proc = snakemake(work, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml"), "--config",
                     "dense={'tasks': ['cityscapes']}", check=False)
    assert proc.returncode != 0 and "cityscapes" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_dense_config_runs_at_small_size_on_the_real_layout(tmp_path):
    from fixtures import write_vit_weights

    ade_fixture(tmp_path / "data")
    write_vit_weights(tmp_path / "weights")
    (tmp_path / "small.yaml").write_text(SMALL + f"data_root: {tmp_path / 'data'}\nweights_root: {tmp_path / 'weights'}\n")
    work = make_workdir(tmp_path / "work")
    snakemake(work, "--cores", "2", *DENSE, str(tmp_path / "small.yaml"), "--", "results/tables/dense_summary.csv",
              timeout=1500)
    res = work / "results"
    manifest = json.loads((res / "data" / "dense" / "ade20k" / "manifest.json").read_text())
    assert manifest["num_classes"] == 150 and manifest["splits"] == {"training": 8, "validation": 4}
    assert manifest["task"] == "dense/ade20k"
    run = res / "esta" / "default" / "dense" / "ade20k" / "seed0" / "tuning"
    stitches = pd.read_csv(run / "stitch_accuracy_test.csv")
    assert len(stitches) == 71 and {"iou_c000", "iou_c149", "test_miou"} <= set(stitches.columns)
    scores = pd.read_csv(run / "scores.csv")  # every stitch with both splits' mIoU and its loss_batch score
    assert scores["test_miou"].tolist() == stitches["test_miou"].tolist() and scores["score"].notna().all()
    summary = pd.read_csv(res / "tables" / "dense_summary.csv")
    assert {"esta", "snnet", "anchor0 alone", "anchor2 alone"} <= set(summary["method"])


def test_smoke_dense_tables(smoke):
    pareto = pd.read_csv(smoke / "tables" / "pareto_dense.csv")
    assert set(pareto["method"]) == {"esta", "snnet"} and set(pareto["task"]) == {"shapes"}
    for _, g in pareto.groupby("method"):
        assert g["is_anchor"].sum() == 3  # every anchor is deployed
        assert g["miou"].between(0, 1).all() and g["trainable_params"].nunique() == 1
    summary = pd.read_csv(smoke / "tables" / "dense_summary.csv").set_index("method")
    # PST trains a fraction of what full fine-tuning trains; SN-Net's cost includes its adapt stage
    assert summary.loc["esta", "trainable_params"] < 0.5 * summary.loc["snnet", "trainable_params"]
    history = smoke / "snnet" / "default" / "dense" / "shapes" / "seed0" / "tuning" / "train_log.csv"
    assert summary.loc["snnet", "steps"] > pd.read_csv(history).shape[0]
    for fig in ("pareto_dense", "all_stitches_dense_shapes"):
        assert (smoke / "figures" / f"{fig}.png").stat().st_size > 10_000


def test_exported_deployed_stitch_reproduces_the_logged_miou(smoke, tmp_path):
    """A deployed stitch of each method, exported standalone (esta.vit.export), scores the test mIoU the
    run logged, from the run's own artifacts."""
    import torch
    import yaml

    from esta.vit.anchors import family
    from esta.vit.build import read_manifest, tuning_config
    from esta.vit.export import export_stitch, load_stitch
    from esta.vit.seg import assemble_seg, confusion, seg_scores
    from esta.vit.seg_data import open_dense

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    d = cfg["dense"]
    m = read_manifest(smoke / "data" / "dense" / "shapes" / "manifest.json")
    x, y = open_dense(m, "test", d, cfg["family"]).tensors
    for method in ("esta", "snnet"):
        run = smoke / method / "default" / "dense" / "shapes" / "seed0" / "tuning"
        anchors = ([smoke / "anchors" / "embedded" / f"anchor{i}.safetensors" for i in range(3)] if method == "esta"
                   else [run / "adapt" / f"anchor{i}.safetensors" for i in range(3)])
        model = assemble_seg(cfg["family"], m["num_classes"], d["img_size"], d["head_hidden"], anchors,
                             run / "stitch_init.safetensors", tuning_config(method, cfg["esta"]),
                             state_file=run / "model.safetensors", task="dense/shapes")
        deployed = pd.read_csv(run / "deployed.csv")
        sid = int(deployed.loc[deployed["front"] != deployed["end"], "stitch_id"].iloc[-1])  # a stitched pick
        arch = [dict(name=s.name, timm_name=s.timm_name, kwargs=s.kwargs) for s in family(f"embedded@{d['img_size']}")]
        standalone = load_stitch(export_stitch(model, sid, tmp_path / method, arch))
        with torch.no_grad():
            got = seg_scores(confusion(standalone(x), y, m["num_classes"]))["miou"]
        logged = deployed.set_index("stitch_id").loc[sid, "test_miou"]
        assert got == pytest.approx(logged, abs=1e-6), (method, sid)


def test_smoke_dense_rows_of_the_cost_and_accuracy_tables(smoke):
    """cost.csv and accuracy_by_task.csv carry the dense task's rows, named by their metric (miou), from
    the dense runs' own files; the classification rows keep metric accuracy."""
    cost = pd.read_csv(smoke / "tables" / "cost.csv")
    assert set(cost["metric"]) == {"accuracy", "miou"}
    dense = cost[cost["metric"] == "miou"].set_index(["method", "step"])
    assert set(dense.index) == {("esta", "train"), ("esta", "deploy"), ("esta", "total"), ("snnet", "adapt"),
                                ("snnet", "stitch"), ("snnet", "deploy"), ("snnet", "total")}
    run = smoke / "{}" / "default" / "dense" / "shapes" / "seed0" / "tuning"
    info = {m: json.loads((Path(str(run).format(m)) / "train.json").read_text()) for m in ("esta", "snnet")}
    assert dense.loc[("esta", "train"), "steps"] == info["esta"]["steps"]
    assert dense.loc[("snnet", "stitch"), "trainable_params"] == info["snnet"]["trainable_params"]
    assert dense.loc[("esta", "train"), "trainable_params"] == info["esta"]["trainable_params"]
    assert (dense["wall_s"] > 0).all() and dense.loc[("snnet", "adapt"), "jobs"] == 3
    assert dense.loc[("esta", "total"), "wall_s"] == pytest.approx(
        dense.loc[("esta", "train"), "wall_s"] + dense.loc[("esta", "deploy"), "wall_s"], rel=1e-3)
    assert dense.loc[("esta", "deploy"), "stored_params_task"] < dense.loc[("snnet", "deploy"), "stored_params_task"]
    by_task = pd.read_csv(smoke / "tables" / "accuracy_by_task.csv")
    rows = by_task[by_task["metric"] == "miou"].set_index("method")
    assert set(rows["task"]) == {"dense/shapes"} and set(rows.index) == {"esta", "snnet", "anchor_ft"}
    assert set(by_task.loc[by_task["metric"] == "accuracy", "task"]) >= set(by_task["task"]) - {"dense/shapes"}
    for method in ("esta", "snnet"):
        deployed = pd.read_csv(Path(str(run).format(method)) / "deployed.csv")
        assert rows.loc[method, "accuracy_mean"] == pytest.approx(deployed["test_miou"].mean())
        assert rows.loc[method, "deployed"] == len(deployed)
    adapt = sorted((Path(str(run).format("snnet")) / "adapt").glob("*.json"))
    alone = [json.loads(f.read_text())["test_miou"] for f in adapt]
    assert rows.loc["anchor_ft", "accuracy_mean"] == pytest.approx(sum(alone) / 3)
    assert rows.loc["anchor_ft", "deployed"] == 3
    by_group = pd.read_csv(smoke / "tables" / "accuracy_by_group.csv")
    assert "dense" not in set(by_group["group"])  # a mean over accuracies and mIoUs would mean nothing
