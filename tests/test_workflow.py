"""The workflow, tested by running it: dry runs of every config, lint and format, validation
errors, and a real run of config/smoke.yaml (one session fixture) whose outputs are checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "config").glob("*.yaml"))]


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's workflow with ``workdir`` as its working directory."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_workdir(path: Path) -> Path:
    """A working directory like a checkout: config files and the esta sources the rules list as code."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "config", "esta", "workflow"):
        if not (path / name).exists():
            (path / name).symlink_to(ROOT / name)
    return path


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """config/smoke.yaml run for real to rule all, once per test session."""
    work = make_workdir(tmp_path_factory.mktemp("smoke"))
    snakemake(work, "--cores", "2", "--configfile", str(ROOT / "config" / "smoke.yaml"))
    return work / "results"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_dry_run_every_config(config, tmp_path):
    work = make_workdir(tmp_path)
    out = snakemake(work, "-n", "--configfile", str(config)).stdout
    assert "train_esta" in out and "snnet_deploy" in out


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


def test_schema_task_enum_is_the_task_table():
    from esta.data import TASKS

    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["tasks"]["items"]["enum"] == list(TASKS)


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
    assert deployed["gmacs"].between(stitches["gmacs"].min(), stitches["gmacs"].max()).all()
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
    from esta.build import open_task
    from esta.export import load_stitch

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
               *[f"ablation_{a}" for a in ("bias", "sampling", "selection", "rank")],
               "importance_vs_accuracy", "grad_interference"]
    for fig in figures:
        for ext in ("pdf", "png"):
            assert (smoke / "figures" / f"{fig}.{ext}").stat().st_size > 1000, (fig, ext)
        numeric_complete(pd.read_csv(smoke / "tables" / f"{fig}.csv"), fig)


def test_accuracy_tables(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    by_task = pd.read_csv(smoke / "tables" / "accuracy_by_task.csv")
    assert set(zip(by_task["method"], by_task["task"])) == {(m, t) for m in ("esta", "snnet") for t in cfg["tasks"]}
    numeric_complete(by_task, "accuracy_by_task")
    assert by_task["accuracy_mean"].between(0, 1).all()
    by_group = pd.read_csv(smoke / "tables" / "accuracy_by_group.csv")
    assert set(by_group["method"]) == {"esta", "snnet"} and "mean" in set(by_group["group"])
    numeric_complete(by_group, "accuracy_by_group")
    deployed = pd.read_csv(smoke / "tables" / "deployed.csv")
    for row in by_task.itertuples():
        d = deployed[(deployed["method"] == row.method) & (deployed["task"] == row.task)]
        assert row.accuracy_mean == pytest.approx(d["test_accuracy"].mean())


def test_cost_table(smoke):
    cost = pd.read_csv(smoke / "tables" / "cost.csv")
    steps = set(zip(cost["method"], cost["step"]))
    assert steps == {("esta", "train"), ("esta", "deploy"), ("esta", "total"), ("snnet", "adapt"),
                     ("snnet", "stitch"), ("snnet", "deploy"), ("snnet", "total")}
    numeric_complete(cost, "cost")
    c = cost.set_index(["method", "step"])
    assert (c["wall_s"] > 0).all() and (c["peak_rss_mb"] > 0).all()
    assert c.loc[("esta", "total"), "wall_s"] == pytest.approx(
        c.loc[("esta", "train"), "wall_s"] + c.loc[("esta", "deploy"), "wall_s"], rel=1e-3)
    assert c.loc[("esta", "total"), "trainable_params"] < c.loc[("snnet", "total"), "trainable_params"] / 5
    assert c.loc[("esta", "deploy"), "stored_params_task"] < c.loc[("snnet", "deploy"), "stored_params_task"]


def test_ablation_tables_compare_their_variants(smoke):
    expected = {"bias": {"stitch-specific biases", "shared biases"},
                "sampling": {"importance sampling", "uniform sampling"},
                "selection": {"importance", "evaluate-all"},
                "rank": {"r = 2", "r = 4", "r = 8", "r = 16"}}
    for name, labels in expected.items():
        t = pd.read_csv(smoke / "tables" / f"ablation_{name}.csv")
        assert set(t["label"]) == labels, name
        assert t["mean_accuracy"].between(0, 1).all()


def test_importance_vs_accuracy_table(smoke):
    cfg = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    t = pd.read_csv(smoke / "tables" / "importance_vs_accuracy.csv")
    stitches = pd.read_csv(smoke / "tables" / "stitches.csv")
    assert set(t["task"]) == set(cfg["tasks"])
    assert len(t) == len(stitches) * len(cfg["tasks"]) * len(cfg["seeds"])
    assert t["spearman"].between(-1, 1).all()


def test_grad_interference_table(smoke):
    t = pd.read_csv(smoke / "tables" / "grad_interference.csv")
    assert set(t["frac"]) == {0.1, 0.5, 1.0}
    assert set(t["stitch_biases"]) == {True, False}
    assert t["cosine"].between(-1, 1).all() and (t["shared_modules"] > 0).all()


def test_report(smoke):
    snakemake(smoke.parent, "--report", "results/report.html", "--configfile", str(ROOT / "config" / "smoke.yaml"))
    html = (smoke / "report.html").read_text(errors="ignore")
    assert len(html) > 10_000 and "importance_vs_accuracy" in html and "ablation_rank" in html
