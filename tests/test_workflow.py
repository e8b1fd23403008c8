"""The workflow, tested by running it: dry runs of every config, lint and format, validation
errors, and a real run of config/smoke.yaml (one session fixture) whose outputs are checked."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import BIN, ROOT, make_workdir, snakemake

from esta.vit.data import task_info
from esta.vit.metrics import with_task_head

pytestmark = pytest.mark.workflow  # runs Snakemake for real: `-m 'not workflow'` skips it

CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_every_config(config, tmp_path):
    work = make_workdir(tmp_path)
    out = snakemake(work, "-n", "--configfile", str(config)).stdout
    assert "train_esta" in out and "snnet_deploy" in out
    if config.name == "paper.yaml":  # the paper's DAG plans without its data (rules check data and weights)
        for rule in ("register_data", "register_weights", "train_esta", "snnet_adapt", "grad_interference"):
            assert rule in out
        assert re.search(r"register_data\s+25\b", out) and re.search(r"register_weights\s+3\b", out)


@pytest.mark.parametrize("scratch, anchors", [("largest", {2}), ("all", {0, 1, 2})])
def test_scratch_control_trains_the_anchors_controls_names(scratch, anchors, tmp_path):
    work = make_workdir(tmp_path)
    out = snakemake(work, "-n", "--config", f"controls={{scratch: {scratch}}}",
                    "--", "results/tables/anchors_alone.csv").stdout
    planned = set(re.findall(r"results/scratch/default/(\S+)/seed0/tuning/adapt/anchor(\d)\.json", out))
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert planned == {(t, str(i)) for t in cfg["tasks"] for i in anchors}


def test_lint():
    proc = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakefmt():
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow/"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_resolved_config_equals_file(config, tmp_path):
    """Every config is complete: nothing leaks in from the default config.yaml."""
    work = make_workdir(tmp_path)
    snakemake(work, "results/config.resolved.yaml", "--cores", "1", "--configfile", str(config))
    resolved = yaml.safe_load((work / "results" / "config.resolved.yaml").read_text())
    assert resolved == yaml.safe_load(config.read_text())


@pytest.mark.parametrize(
    "override, culprit",
    [("bogus_key=1", "bogus_key"), ("threads=many", "threads"), ("tasks=[]", "tasks"), ("family=3", "family"),
     ("tasks=[vtab/no_such_task]", "vtab/no_such_task"), ("esta={lora: {rank: -2}}", "rank")],
)
def test_bad_config_fails_in_validation_naming_the_key(override, culprit, tmp_path):
    work = make_workdir(tmp_path)
    proc = snakemake(work, "-n", "--config", override, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "validat" in text.lower() and culprit in text
    assert not (work / "results").exists()  # failed before any job


@pytest.mark.parametrize(
    "override, line",
    [("threads=many", "config.threads = 'many': 'many' is not of type 'integer' [schema rule properties/threads/type]"),
     # --config leaves values nested in a mapping as strings
     ("variants={default: {}, nobias: {esta: {lora: {rank: 0}}}}",
      "config.esta.lora.rank = '0': '0' is not of type 'integer' [schema rule "
      "properties/esta/properties/lora/properties/rank/type]")],
)
def test_validation_error_is_one_line_per_violation_not_the_schema(override, line, tmp_path):
    """The error names key path, value and rule, without the schema around it (Snakemake's
    validate prints the whole schema: every key's description)."""
    work = make_workdir(tmp_path)
    proc = snakemake(work, "-n", "--config", override, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and line in text, text
    if "variants" in override:
        assert "variants.nobias" in text
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["weights_root"]["description"][:40] not in text
    assert "description" not in text and len(text) < 2000, text


def test_schema_task_enum_is_the_task_table():
    """Task ids are the table's, or custom/<name> for a user's data set (spec §13)."""
    from esta.vit.data import TASKS

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    custom, table = schema["properties"]["tasks"]["items"]["anyOf"]
    assert table["enum"] == list(TASKS)
    assert custom["pattern"] == "^custom/[A-Za-z0-9_]+$"


def test_scripts_use_params_not_argparse_or_config():
    for script in (ROOT / "workflow" / "scripts").glob("*.py"):
        text = script.read_text()
        assert "argparse" not in text, script
        assert "snakemake.config" not in text, script


def test_every_rule_logs_and_heavy_rules_benchmark():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    rules = re.split(r"\nrule ", text)[1:]
    heavy = {"pretrain_anchor", "ls_init", "train_esta", "select_esta", "snnet_adapt", "snnet_stitch",
             "snnet_deploy", "evaluate_deployed", "export_deployed", "evaluate_stitches", "grad_interference",
             "register_data", "register_weights"}
    names = set()
    for body in rules:
        name = body.split(":", 1)[0]
        names.add(name)
        assert "log:" in body, name
        assert "conda:" in body, name
        if name in heavy:
            assert "benchmark:" in body, name
    assert heavy <= names


def test_benchmark_files_mirror_their_logs():
    """read_benchmarks finds each job's exact peak memory in its log at the mirrored path
    (benchmarks/<rule>/<job>.tsv -> logs/<rule>/<job>.log): every rule keeps that layout."""
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    pairs = re.findall(r'log:\s*\n\s*f"([^"]+)",?\s*\n\s*benchmark:\s*\n\s*f"([^"]+)"', text)
    assert len(pairs) >= 20, pairs  # every benchmarked rule writes log: then benchmark:
    assert len(pairs) == text.count("benchmark:")
    for log, bench in pairs:
        assert bench.replace("/benchmarks/", "/logs/").removesuffix(".tsv") + ".log" == log, (log, bench)


# ------------------------------------------------------------------------------------------------
# The real run


def test_smoke_builds_every_target(smoke):
    for rel in ["figures/pareto_all.pdf", "figures/pareto_all.png", "tables/pareto_all.csv",
                "tables/stitches.csv", "tables/benchmarks.csv", "tables/anchors.csv", "config.resolved.yaml"]:
        assert (smoke / rel).stat().st_size > 0, rel
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    for task in cfg["tasks"]:
        assert (smoke / "figures" / f"pareto_{task.replace('/', '-')}.pdf").is_file()


def test_deployed_tables(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    stitches = pd.read_csv(smoke / "tables" / "stitches.csv")
    deployed = pd.read_csv(smoke / "tables" / "deployed.csv")
    assert set(deployed["method"]) == {"esta", "snnet"}
    assert set(deployed["task"]) == set(cfg["tasks"])
    assert deployed["test_accuracy"].between(0, 1).all()
    for task, g in deployed.groupby("task"):  # each task's MACs end in its own head
        own = with_task_head(stitches, task_info(task).num_classes)
        assert g["gmacs"].between(own["gmacs"].min(), own["gmacs"].max()).all(), task
    anchors = stitches.loc[stitches["front"] == stitches["end"], "stitch_id"]
    for (method, task), g in deployed.groupby(["method", "task"]):
        assert set(anchors) <= set(g["stitch_id"]), (method, task)
        assert g.loc[g["reason"] == "interval", "interval"].is_unique
    pareto = pd.read_csv(smoke / "tables" / "pareto_all.csv")
    assert set(pareto["method"]) == {"esta", "snnet"}
    assert not pareto[["gmacs", "accuracy", "accuracy_std", "trainable_params"]].isna().any().any()
    params = pareto.groupby("method")["trainable_params"].first()
    assert params["esta"] < params["snnet"] / 5


def test_benchmarks_cover_heavy_rules(smoke):
    bench = pd.read_csv(smoke / "tables" / "benchmarks.csv")
    assert {"train_esta", "snnet_adapt", "snnet_stitch", "snnet_deploy", "evaluate_deployed",
            "evaluate_stitches"} <= set(bench["rule"])
    assert (bench["s"] > 0).all()


def test_exported_stitch_reproduces_logged_accuracy(smoke):
    from esta.vit.build import open_task
    from esta.vit.export import load_stitch

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    task = cfg["tasks"][0]
    for method in ("esta", "snnet"):
        folder = smoke / method / "default" / task / "deployed" / "seed0"
        index = pd.read_csv(folder / "index.csv")
        row = index[index["reason"] == "interval"].iloc[-1]  # a stitched (or anchor) interval pick
        model = load_stitch(folder / row["file"])
        data = open_task(smoke / "data" / task / "manifest.json", "test", cfg["data"]["img_size"])
        x, y = data.tensors
        with torch.no_grad():
            acc = (model(x).argmax(-1) == y).float().mean().item()
        assert acc == pytest.approx(row["test_accuracy"], abs=1e-9), (method, row["stitch_id"])


def test_rerun_is_a_no_op(smoke):
    out = snakemake(smoke.parent, "-n", "--configfile", str(ROOT / "config" / "smoke.yaml")).stdout
    assert "Nothing to be done" in out


# ------------------------------------------------------------------------------------------------
# Every table and figure of the paper (spec §9-§10), checked for content


def numeric_complete(df: pd.DataFrame, name: str) -> None:
    num = df.select_dtypes("number")
    assert not num.empty and not num.isna().any().any(), f"{name}: NaN in {num.columns[num.isna().any()].tolist()}"


def test_every_figure_has_pdf_png_and_csv_twin(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    figures = ["pareto_all", *[f"pareto_{t.replace('/', '-')}" for t in cfg["tasks"]],
               *[f"ablation_{a}" for a in ("bias", "sampling", "selection", "rank", "peft", "stages")],
               "importance_vs_accuracy", "grad_interference"]
    for fig in figures:
        for ext in ("pdf", "png"):
            assert (smoke / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
        numeric_complete(pd.read_csv(smoke / "tables" / f"{fig}.csv"), fig)


def test_accuracy_tables(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    by_task = pd.read_csv(smoke / "tables" / "accuracy_by_task.csv")
    by_task = by_task[by_task["metric"] == "accuracy"]  # the dense tasks' mIoU rows: test_dense_workflow.py
    methods = ("esta", "snnet", "anchor_ft", "scratch")  # + the anchors trained alone (reference runs)
    assert set(zip(by_task["method"], by_task["task"])) == {(m, t) for m in methods for t in cfg["tasks"]}
    numeric_complete(by_task, "accuracy_by_task")
    assert by_task["accuracy_mean"].between(0, 1).all()
    by_group = pd.read_csv(smoke / "tables" / "accuracy_by_group.csv")
    assert set(by_group["method"]) == set(methods) and "mean" in set(by_group["group"])
    numeric_complete(by_group, "accuracy_by_group")
    deployed = pd.concat([pd.read_csv(smoke / "tables" / "deployed.csv"),
                          pd.read_csv(smoke / "tables" / "anchors_alone.csv")])
    n_scratch = 1 if cfg["controls"]["scratch"] == "largest" else 3
    scratch = deployed[deployed["method"] == "scratch"]
    assert len(scratch) == n_scratch * len(cfg["tasks"])  # every task, the anchors controls.scratch names
    assert set(scratch["stitch_id"]) == set(range(3)[-n_scratch:])
    assert set(by_task.loc[by_task["method"] == "scratch", "deployed"]) == {n_scratch}
    for row in by_task.itertuples():
        d = deployed[(deployed["method"] == row.method) & (deployed["task"] == row.task)]
        assert row.accuracy_mean == pytest.approx(d["test_accuracy"].mean())


def test_cost_table(smoke):
    cost = pd.read_csv(smoke / "tables" / "cost.csv")
    cost = cost[cost["metric"] == "accuracy"]  # the dense tasks' mIoU rows: test_dense_workflow.py
    steps = set(zip(cost["method"], cost["step"]))
    assert steps == {("esta", "train"), ("esta", "deploy"), ("esta", "total"), ("snnet", "adapt"),
                     ("snnet", "stitch"), ("snnet", "deploy"), ("snnet", "total"),
                     ("esta_three", "adapt"), ("esta_three", "train"), ("esta_three", "deploy"), ("esta_three", "total")}
    numeric_complete(cost, "cost")
    c = cost.set_index(["method", "step"])
    # optimizer steps: every training step has some, deployment none; three-stage ESTA's stage 1
    # trains each of the 3 anchors alone with ESTA's recipe, so as many steps as its stage 2, 3 times
    assert (c.xs("deploy", level="step")["steps"] == 0).all()
    assert (c.loc[[("esta", "train"), ("snnet", "adapt"), ("snnet", "stitch")], "steps"] > 0).all()
    assert c.loc[("esta_three", "adapt"), "steps_per_task"] == 3 * c.loc[("esta_three", "train"), "steps_per_task"]
    assert c.loc[("esta_three", "total"), "wall_s"] > c.loc[("esta_three", "train"), "wall_s"]
    assert (c["wall_s"] > 0).all() and (c["peak_rss_mb"] > 0).all()
    assert c.loc[("esta", "total"), "wall_s"] == pytest.approx(
        c.loc[("esta", "train"), "wall_s"] + c.loc[("esta", "deploy"), "wall_s"], rel=1e-3)
    assert c.loc[("esta", "total"), "trainable_params"] < c.loc[("snnet", "total"), "trainable_params"] / 5
    assert c.loc[("esta", "deploy"), "stored_params_task"] < c.loc[("snnet", "deploy"), "stored_params_task"]


def test_ablation_tables_compare_their_variants(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    epochs = cfg["esta"]["train"]["epochs"]

    def variant(v: str, *keys: str):
        """A key of one ablation variant's ESTA settings (the default's where the variant is default)."""
        node = cfg["esta"] if v == "default" else cfg["variants"][v]["esta"]
        for k in keys:
            node = node[k]
        return node

    ranks = [variant(v, "lora", "rank") for v in cfg["ablations"]["rank"]]
    peft = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA³", "adapter": "Adapter", "adaptformer": "AdaptFormer"}
    expected = {"bias": {"stitch-specific biases", "shared biases"},
                "sampling": {f"{variant(v, 'sampler', 'kind')} sampling" for v in cfg["ablations"]["sampling"]},
                "selection": {"importance", "importance, refreshed", "loss", "loss on a fixed batch",
                              "evaluate (selection split)", "oracle"},
                "rank": {f"r = {r}" for r in ranks},
                "peft": {peft[variant(v, "peft", "method")] for v in cfg["ablations"]["peft"]},
                "stages": {f"one-stage ({epochs} epochs)", f"three-stage ({epochs} epochs per stage)"}}
    for name, labels in expected.items():
        t = pd.read_csv(smoke / "tables" / f"ablation_{name}.csv")
        assert set(t["label"]) == labels, name
        assert t["mean_accuracy"].between(0, 1).all()
    for name in ("peft", "stages"):  # what each variant costs, beside its curve
        t = pd.read_csv(smoke / "tables" / f"ablation_{name}.csv").groupby("label").first()
        assert (t[["trainable_params", "train_wall_s", "train_steps", "train_peak_rss_mb"]] > 0).all().all(), name
    stages = pd.read_csv(smoke / "tables" / "ablation_stages.csv").groupby("label").first()
    one, three = f"one-stage ({epochs} epochs)", f"three-stage ({epochs} epochs per stage)"
    assert stages.loc[three, "train_steps"] == 4 * stages.loc[one, "train_steps"]


def test_three_stage_run_starts_from_its_adapted_anchors(smoke):
    """The three-stage variant's stitch stage names its stage-1 states as inputs, its stitching
    layers were fitted on the adapted anchors, and it records stage 1's cost."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    run = smoke / "esta" / "three" / cfg["ablations"]["tasks"][0] / "seed0" / "tuning"
    info = json.loads((run / "train.json").read_text())
    stage1 = [json.loads((run / "stage1" / f"anchor{i}.json").read_text()) for i in range(3)]
    assert info["stages"] == "three" and info["adapt_steps"] == sum(r["steps"] for r in stage1) == 3 * info["steps"]
    assert all(r["tuning"]["mode"] == "pst" and r["tuning"]["peft"] == info["tuning"]["peft"] for r in stage1)
    from esta.tensors import load_tensors_file

    _, meta = load_tensors_file(run / "stitch_init.safetensors")
    assert meta["adapted"] is True
    _, default_meta = load_tensors_file(smoke / "esta" / "default" / run.relative_to(smoke / "esta" / "three")
                                        / "stitch_init.safetensors")
    assert default_meta["adapted"] is False


def test_importance_vs_accuracy_table(smoke):
    """Every stitch with a score, per deployment score, against its test accuracy."""
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    t = pd.read_csv(smoke / "tables" / "importance_vs_accuracy.csv")
    stitches = pd.read_csv(smoke / "tables" / "stitches.csv")
    assert set(t["task"]) == set(cfg["tasks"])
    assert set(t["score_name"]) == {"importance", "loss", "loss_batch", "evaluate"}
    assert set(t["stitch_id"]) <= set(stitches["stitch_id"]) and t["score"].notna().all()
    assert not t.duplicated(["task", "seed", "selection", "stitch_id"]).any()
    assert (t["rho"].between(-1, 1) | t["rho"].isna()).all()  # NaN: undefined, never a 0
    # loss_batch and evaluate measure every stitch; the evaluate score is the selection accuracy
    assert (t.groupby("selection")["stitch_id"].nunique()[["loss_batch", "evaluate"]] == len(stitches)).all()


def test_selection_scores_table(smoke):
    """Each score judged like with like per task and over tasks: the oracle's deployment recomputed here
    from every stitch's test accuracy, no score above it over the same intervals, the measured scores
    missing no interval, one rho set per run, the loss window grid, and the seconds each score adds."""
    from esta.pareto import assign_intervals

    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    s = pd.read_csv(smoke / "tables" / "selection_scores.csv")
    assert set(s["task"]) == {*cfg["tasks"], "mean"}
    main = {"importance", "refreshed", "loss", "loss_batch", "evaluate", "oracle"}
    window = cfg["deploy"]["loss"]
    grid_row = f"loss {window['window']:g} {window['weighting']}"
    assert main <= set(s["selection"]) and grid_row in set(s["selection"])
    by = s.set_index(["selection", "task"])
    oracle = by.xs("oracle", level="selection")
    for sel in main:  # over the same intervals nobody deploys better than the oracle
        assert (by.xs(sel, level="selection")["accuracy"] <= oracle["accuracy"] + 1e-12).all(), sel
    assert by.loc[("evaluate", "mean"), "gap_points"] == 0.0
    # the configured window of `loss` is one of the grid's: the same numbers from the sampler and the history
    for col in ("accuracy", "auc", "hypervolume", "missed", "rho", "rho_n"):
        assert by.loc[("loss", "mean"), col] == pytest.approx(by.loc[(grid_row, "mean"), col], nan_ok=True), col
    assert by.loc[("evaluate", "mean"), "wall_s"] > by.loc[("loss", "mean"), "wall_s"] >= 0
    # per run: the oracle's accuracy is the mean over intervals of each interval's best stitch; the scores
    # that measure every stitch fill every interval; every main score's rho is over one stitch set
    runs = pd.read_csv(smoke / "tables" / "selection_scores_runs.csv")
    stitches = pd.read_csv(smoke / "tables" / "stitches.csv")
    intervals = assign_intervals(stitches["macs_nohead"], cfg["deploy"]["intervals"])
    for (task, seed), run in runs.groupby(["task", "seed"]):
        test = pd.read_csv(smoke / "esta" / "default" / task / f"seed{seed}" / "tuning" / "stitch_accuracy_test.csv")
        acc = stitches["stitch_id"].map(test.set_index("stitch_id")["test_accuracy"])
        r = run.set_index("selection")
        assert r.loc["oracle", "accuracy"] == pytest.approx(acc.groupby(intervals).max().mean())
        assert (r.loc[["loss_batch", "evaluate", "oracle"], "missed"] == 0).all()
        assert r.loc[list(main), "rho_n"].nunique() == 1 and r.loc["oracle", "rho"] == pytest.approx(1.0)
        assert ((r["auc"] > 0) & (r["auc"] <= 1) & (r["hypervolume"] > 0) & (r["hypervolume"] <= 1)).all()
        assert (r["deployed"] >= len(stitches[stitches["front"] == stitches["end"]])).all()


def test_deployed_table_says_which_stitches_are_dominated(smoke):
    d = pd.read_csv(smoke / "tables" / "deployed.csv")
    assert d["dominated"].dtype == bool and set(d["score_name"]) >= {"evaluate"}
    for (method, task, seed), g in d.groupby(["method", "task", "seed"]):
        g = g.sort_values("macs_nohead")
        for i, row in enumerate(g.itertuples()):  # dominated: a cheaper deployed stitch scores as well
            s = -g["score"] if row.score_name in ("loss", "loss_batch") else g["score"]
            cheaper = (g["macs_nohead"] < row.macs_nohead).to_numpy()
            want = bool((s[cheaper] >= s.iloc[i]).any()) if np.isfinite(row.score) else False
            assert row.dominated == want, (method, task, seed, row.stitch_id)


def test_whole_palette_tables(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    stitches = pd.read_csv(smoke / "tables" / "stitches.csv")
    deployed = pd.read_csv(smoke / "tables" / "deployed.csv")
    for task in cfg["tasks"]:
        slug = task.replace("/", "-")
        t = pd.read_csv(smoke / "tables" / f"all_stitches_{slug}.csv")
        assert (smoke / "figures" / f"all_stitches_{slug}.png").stat().st_size > 1000
        for m in ("esta", "snnet"):
            g = t[t["method"] == m]
            assert sorted(g["stitch_id"]) == sorted(stitches["stitch_id"])  # every stitch, not only deployed
            chosen = set(deployed[(deployed["method"] == m) & (deployed["task"] == task)]["stitch_id"])
            assert set(g.loc[g["deployed_share"] > 0, "stitch_id"]) == chosen
            front = g[g["front_member"]].sort_values("gmacs")
            assert front["accuracy"].is_monotonic_increasing and g["accuracy"].max() == front["accuracy"].max()


def test_grad_interference_table(smoke):
    t = pd.read_csv(smoke / "tables" / "grad_interference.csv")
    assert set(t["frac"]) == {0.1, 0.5, 1.0}
    assert set(t["stitch_biases"]) == {True, False}
    assert t["cosine"].between(-1, 1).all() and (t["shared_modules"] > 0).all()


def test_report(smoke):
    snakemake(smoke.parent, "--report", "results/report.html", "--configfile", str(ROOT / "config" / "smoke.yaml"))
    html = (smoke / "report.html").read_text(errors="ignore")
    assert len(html) > 10_000 and "importance_vs_accuracy" in html and "ablation_rank" in html


# ------------------------------------------------------------------------------------------------
# Paper scale on fixtures in the real formats, and the cluster code path


PAPER_OVERRIDE = """
tasks: [vtab/dtd]
seeds: [0]
threads: 1
checkpoint_every_s: 60
data: {seed: 0, n_train: 8, n_val: 4, n_test: 6, img_size: 32, num_workers: 0}
ls_init: {n_images: 8}
esta:
  train: {epochs: 2, batch_size: 8, lr: 0.001, lr_anchor: null, weight_decay: 0.0001, warmup_epochs: 0}
snnet:
  adapt: {epochs: 1, batch_size: 8, lr: 0.001, lr_anchor: 0.0001, weight_decay: 0.0001, warmup_epochs: 0}
  stitch: {epochs: 2, batch_size: 8, lr: 0.001, lr_anchor: 0.0001, weight_decay: 0.0001, warmup_epochs: 0}
eval: {batch_size: 64}
ablations: {tasks: [vtab/dtd], bias: [default, nobias], sampling: [default, uniform], rank: [rank2, rank4, default, rank16],
  peft: [default, ia3], stages: [default, three]}
"""


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    """config/paper.yaml shrunk through a config override (32 px, two steps, one task, one seed)
    against a VTAB-1k tree and random-init ViT-Ti/S/B IN-21K-style weight files written here."""
    from fixtures import write_vit_weights, write_vtab_fixture

    root = tmp_path_factory.mktemp("paper")
    write_vtab_fixture(root / "data", names=("dtd",), n=(8, 4, 6))
    write_vit_weights(root / "weights")  # 21,843-class heads, as the .augreg_in21k files
    override = root / "override.yaml"
    override.write_text(PAPER_OVERRIDE + f"data_root: {root / 'data'}\nweights_root: {root / 'weights'}\n")
    work = make_workdir(root / "work")
    args = ("--configfile", str(ROOT / "config" / "paper.yaml"), str(override))
    snakemake(work, "results/figures/pareto_all.pdf", "--cores", "2", *args, timeout=1200)
    return work, args, root


def test_paper_config_runs_on_real_formats(paper_run):
    work, _, root = paper_run
    res = work / "results"
    manifest = json.loads((res / "data" / "vtab" / "dtd" / "manifest.json").read_text())
    assert manifest["root"] == str((root / "data" / "vtab-1k" / "dtd").resolve())
    assert manifest["splits"] == {"train800": 8, "val200": 4, "train800val200": 12, "test": 6}
    listed = root / "data" / "vtab-1k" / "dtd" / "test.txt"
    assert manifest["files"]["test.txt"]["sha256"] == hashlib.sha256(listed.read_bytes()).hexdigest()
    for i, name in enumerate(("tiny", "small", "base")):
        info = json.loads((res / "anchors" / "vit-ti-s-b" / f"anchor{i}.json").read_text())
        src = root / "weights" / f"vit_{name}_patch16_224.augreg_in21k.safetensors"
        assert info["source"]["file"] == str(src.resolve()) and info["num_classes"] == 21843
        assert info["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    stitches = pd.read_csv(res / "tables" / "stitches.csv")
    assert len(stitches) == 71  # ViT-Ti/S/B: SN-Net's enumeration
    deployed = pd.read_csv(res / "tables" / "deployed.csv")
    assert set(deployed["method"]) == {"esta", "snnet"} and set(deployed["task"]) == {"vtab/dtd"}
    metrics = pd.read_csv(res / "esta" / "default" / "vtab" / "dtd" / "metrics.csv")
    assert {"device", "dtype", "torch", "timm", "peft"} <= set(metrics.columns)
    assert (metrics["device"] == "cpu").all() and (metrics["dtype"] == "float32").all()
    assert metrics["trainable_params"].iloc[0] > 4e6  # ViT-Ti/S/B PST with 47 classes: ~4.7 M


def test_changed_data_reruns_registration(paper_run):
    work, args, root = paper_run
    assert "Nothing to be done" in snakemake(work, "results/figures/pareto_all.pdf", "-n", *args).stdout
    listed = root / "data" / "vtab-1k" / "dtd" / "test.txt"
    lines = listed.read_text().splitlines(keepends=True)
    listed.write_text("".join(reversed(lines)))  # same images, another order: other bytes
    try:
        out = snakemake(work, "results/figures/pareto_all.pdf", "-n", *args).stdout
        assert "register_data" in out and "evaluate_deployed" in out
    finally:
        listed.write_text("".join(lines))


def test_local_cluster_profile_builds_one_task(smoke, tmp_path):
    """The cluster code path (cluster-generic executor, job scripts submitted to submit.sh)."""
    work = make_workdir(tmp_path)
    for folder in ("data", "anchors"):  # reuse the smoke run's data and pretrained anchors
        shutil.copytree(smoke / folder, work / "results" / folder, copy_function=shutil.copy2)
    target = "results/esta/default/embedded/digits/metrics.csv"
    proc = snakemake(work, target, "--profile", "workflow/profiles/local-cluster", "--configfile",
                     str(ROOT / "config" / "smoke.yaml"))
    text = proc.stdout + proc.stderr
    assert "external jobid" in text.lower()
    assert "pretrain_anchor" not in text  # the copied anchors were reused
    ours = pd.read_csv(work / target)
    ref = pd.read_csv(smoke / "esta" / "default" / "embedded" / "digits" / "metrics.csv")
    assert ours["test_accuracy"].tolist() == ref["test_accuracy"].tolist()
