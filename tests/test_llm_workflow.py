"""The Stitched LLaMA part of the workflow (rules/llm.smk), tested by running it: config/llama.yaml
plans without data and fails naming the missing key; the LLM part of config/smoke.yaml runs for real
(pretrained tiny anchors, procedural tasks); config/llama.yaml runs for real on tiny HF folders
written here and the Alpaca fixture. Each real run is a few minutes of mostly import time on 2 cores."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, make_workdir, snakemake
from transformers import LlamaConfig, LlamaForCausalLM

from esta.llm import tasks
from esta.llm.build import assemble, stitched
from esta.llm.data import load_alpaca
from esta.llm.export import load_stitch

pytestmark = pytest.mark.workflow  # runs Snakemake for real: `-m 'not workflow'` skips it

LLAMA = ROOT / "config" / "llama.yaml"
SMOKE = ROOT / "config" / "smoke.yaml"
TARGETS = ["results/figures/llm_pareto.pdf", "results/figures/llm_pareto.png", "results/tables/llm_lm_eval.csv",
           "results/tables/llm_selection_scores.csv"]
FIXTURE = ROOT / "tests" / "data" / "alpaca_tiny.json"


def test_llama_config_plans_without_data(tmp_path):
    out = snakemake(make_workdir(tmp_path), "-n", "--configfile", str(LLAMA), "--", *TARGETS).stdout
    for rule in ("llm_prepare", "llm_register_anchor", "llm_ls_init", "llm_train_esta", "llm_adapt_anchor",
                 "llm_select", "llm_evaluate", "llm_export", "llm_pareto_table", "plot_llm_pareto"):
        assert rule in out, rule
    assert "llm_pretrain_anchor" not in out  # folders are registered, never pretrained


def test_default_installs_the_shipped_anchors(tmp_path):
    """The embedded default stitches the shipped pair (esta/llm/assets/tiny/): installed, never pretrained;
    config/upstream.yaml plans the pretraining that ships them."""
    work = make_workdir(tmp_path)
    out = snakemake(work, "-n", "--cores", "1", "--", *TARGETS).stdout
    assert "llm_install_anchor" in out and "llm_pretrain_anchor" not in out
    out = snakemake(work, "-n", "--cores", "1", "--configfile", str(ROOT / "config" / "upstream.yaml"),
                    "--forceall", "llm_ship_anchors").stdout
    assert "llm_pretrain_anchor" in out and "llm_install_anchor" not in out


def test_llama_config_fails_naming_the_missing_key(tmp_path):
    work = make_workdir(tmp_path)
    proc = snakemake(work, "--cores", "1", "--configfile", str(LLAMA), "--", *TARGETS, check=False)
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "llm_prepare.log").read_text()
    assert "llm.alpaca_json = 'data/alpaca_data.json' does not exist" in log, log[-2000:]


def check_pareto(results: Path, cfg: dict) -> pd.DataFrame:
    """The table behind the figure: ESTA's deployed stitches and both anchors adapted alone, anchors
    marked, numbers finite; the deployed ESTA stitches were exported and reload with equal logits."""
    table = pd.read_csv(results / "tables" / "llm_pareto.csv")
    stitches = pd.read_csv(results / "tables" / "llm_stitches.csv")
    alone = table[table["method"] == "anchor_ft"]
    assert sorted(alone["stitch_id"]) == [0, 1] and alone["anchor"].all()
    esta = table[table["method"] == "esta"]
    assert {0, 1} <= set(esta["stitch_id"])  # anchors are always deployed
    assert len(esta) > 2  # and at least one stitch between them
    assert table[["nll", "em", "params"]].notna().all().all()
    assert (table["nll"] > 0).all()
    merged = table.merge(stitches, on="stitch_id", suffixes=("", "_table"))
    assert (merged["params"] == merged["params_table"]).all()
    for ext in ("pdf", "png"):
        assert (results / "figures" / f"llm_pareto.{ext}").stat().st_size > 1000
    # an exported stitch is the trained stitched model on that stitch
    run = results / "llm" / "esta" / "default" / "seed0"
    sid = int(esta.loc[~esta["anchor"], "stitch_id"].iloc[0])
    folders = cfg["llm"]["anchors"]["folders"] or [results / "llm" / "anchors" / f"anchor{i}" for i in (0, 1)]
    net, _ = stitched(folders, cfg["llm"]["dtype"], stitch_init=results / "llm" / "stitch_init.safetensors")
    model = assemble(net, cfg["llm"]["pst"], run / "model.safetensors").eval()
    deployed, tokenizer = load_stitch(run / "deployed" / f"stitch{sid}")
    ids = tokenizer(["### Instruction:\nCopy the digits. 123\n\n### Response:"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref, got = model(ids, None, sid).float(), deployed(ids).float()
    # fp32: equal; bf16: the export rounds W + ΔW (merged in fp32) to bf16 once more than training did
    tol = 1e-4 if cfg["llm"]["dtype"] == "fp32" else 0.03 * float(ref.abs().max())
    assert (ref - got).abs().max() <= tol
    assert (run / "samples.csv").stat().st_size > 0
    return table


def test_smoke_llm_part_runs(smoke, tmp_path):
    """The smoke's LLM part, as the session's smoke run built it (rule all holds every LLM target)."""
    work = smoke.parent
    for target in TARGETS:
        assert (work / target).exists(), target
    cfg = yaml.safe_load(SMOKE.read_text())
    check_pareto(work / "results", cfg)
    info = json.loads((work / "results" / "llm" / "anchors" / "anchor1.json").read_text())
    assert info["steps"] == cfg["llm"]["pretrain"]["steps"][1] and info["check_metric"] == "em"
    bench = work / "results" / "benchmarks" / "llm_train_esta" / "default" / "seed0.tsv"
    assert bench.is_file()
    # llm.adapt sets the baseline's own epochs; ESTA keeps llm.train's
    esta = json.loads((work / "results" / "llm" / "esta" / "default" / "seed0" / "train.json").read_text())
    for i in (0, 1):
        alone = json.loads((work / "results" / "llm" / "anchor_ft" / "seed0" / f"anchor{i}" / "train.json").read_text())
        assert alone["train"]["epochs"] == cfg["llm"]["adapt"]["epochs"] != esta["train"]["epochs"]
        assert alone["steps"] == esta["steps"] * cfg["llm"]["adapt"]["epochs"] / cfg["llm"]["train"]["epochs"]
    check_lm_eval(work / "results", cfg)
    check_scores(work / "results", cfg)
    # llm.nproc 2: the smoke's ESTA job ran data parallel (torchrun, 2 gloo ranks); the same job in one
    # process ends at the same trainable state within 1e-5 and trains the same stitch sequence
    assert esta["nproc"] == cfg["llm"]["nproc"] == 2
    run = work / "results" / "llm" / "esta" / "default" / "seed0"
    spec = json.loads((work / "results" / ".checkpoints" / "llm" / "esta" / "default" / "seed0" / "job.json").read_text())
    one = tmp_path / "one"
    spec = dict(spec, nproc=1, params=dict(spec["params"], ckpt_dir=str(one / "ckpt")),
                output={k: str(one / Path(v).name) for k, v in spec["output"].items()})
    import os

    from esta.llm.job import run as run_job
    from esta.tensors import load_tensors_file

    cwd = os.getcwd()
    os.chdir(work)  # the spec's inputs are relative to the workflow's directory
    try:
        run_job(spec)
    finally:
        os.chdir(cwd)
    two, _ = load_tensors_file(run / "model.safetensors")
    single, meta = load_tensors_file(one / "model.safetensors")
    assert meta["nproc"] == 1 and set(two) == set(single)
    assert max((two[k] - single[k]).abs().max().item() for k in two) <= 1e-5
    history = [pd.read_csv(f)["stitch_id"].tolist() for f in (run / "train_log.csv", one / "train_log.csv")]
    assert history[0] == history[1]


def check_scores(results: Path, cfg: dict) -> None:
    """Each training-time score of the LLM pair judged against exact match like the ViT family's: every
    stitch evaluated, the oracle's accuracy recomputed here as each parameter interval's best exact match,
    no score above it over the same intervals, one rho set per seed for every score (its size recomputed
    from the score files); the configured score is what deployed.csv was deployed by, and loss_batch
    measured every stitch."""
    from esta.pareto import assign_intervals

    table = pd.read_csv(results / "tables" / "llm_selection_scores.csv").set_index("selection")
    assert set(table.index) == {"importance", "loss", "loss_batch", "oracle"}
    stitches = pd.read_csv(results / "tables" / "llm_stitches.csv")
    intervals = assign_intervals(stitches["params"], cfg["llm"]["deploy"]["intervals"])
    best, common = [], []
    for seed in cfg["seeds"]:
        run = results / "llm" / "esta" / "default" / f"seed{seed}"
        em = pd.read_csv(run / "stitch_metrics.csv").set_index("stitch_id")["em"]
        assert sorted(em.index) == sorted(stitches["stitch_id"]) and em.between(0, 1).all()  # every stitch
        best.append(stitches["stitch_id"].map(em).groupby(intervals).max().mean())
        ids = set(stitches["stitch_id"])
        for how in ("importance", "loss", "loss_batch"):
            scores = pd.read_csv(run / f"scores_{how}.csv")
            ids &= set(scores.loc[scores["score"].notna(), "stitch_id"])
            assert len(pd.read_csv(run / f"deployed_{how}.csv")) >= 2  # the anchors at least
        common.append(len(ids))
    assert table.loc["oracle", "accuracy"] == pytest.approx(sum(best) / len(best))
    assert (table["accuracy"] <= table.loc["oracle", "accuracy"] + 1e-12).all()
    assert (table["rho_n"] == sum(common) / len(common)).all()
    assert table.loc[["loss_batch", "oracle"], "missed"].eq(0).all()
    assert (table["rho"].between(-1, 1) | table["rho"].isna()).all()  # NaN: undefined, never a 0
    run = results / "llm" / "esta" / "default" / "seed0"
    score = cfg["llm"]["deploy"]["score"]
    deployed = pd.read_csv(run / "deployed.csv")
    assert set(deployed["score_name"]) == {score} and "dominated" in deployed
    assert deployed["stitch_id"].tolist() == pd.read_csv(run / f"deployed_{score}.csv")["stitch_id"].tolist()
    batch = pd.read_csv(run / "scores_loss_batch.csv")
    assert len(batch) == len(stitches) and (batch["score"] > 0).all() and batch["eligible"].all()


def check_lm_eval(results: Path, cfg: dict) -> pd.DataFrame:
    """llm_lm_eval.csv: every exported deployed stitch of every run scored on every llm.lm_eval task,
    and the workflow's own task agrees with the multiple-choice accuracy llm_evaluate computed."""
    table = pd.read_csv(results / "tables" / "llm_lm_eval.csv")
    acc = table[table["metric"] == "acc"]
    assert set(acc["task"]) == set(cfg["llm"]["lm_eval"]["tasks"]) and acc["value"].between(0, 1).all()
    metrics = pd.read_csv(results / "llm" / "esta" / "default" / "seed0" / "metrics.csv")
    deployed = pd.read_csv(results / "llm" / "esta" / "default" / "seed0" / "deployed.csv")
    mine = acc[(acc["variant"] == "default") & (acc["seed"] == 0) & (acc["task"] == "esta_llm_mc")]
    assert sorted(mine["stitch_id"]) == sorted(deployed["stitch_id"])
    ours = metrics.set_index("stitch_id")["mc_acc"]
    assert ours.between(0, 1).all()
    if cfg["llm"]["dtype"] == "fp32":  # lm-eval over the exported stitch == our scorer over the trained model
        for row in mine.itertuples():
            assert row.value == pytest.approx(ours[row.stitch_id], abs=1e-9)
    return table


def write_tiny_folders(root: Path) -> list[str]:
    """Two random LlamaForCausalLMs of one tokenizer (trained on the fixture), saved as HF folders."""
    tokenizer = tasks.train_tokenizer(load_alpaca(FIXTURE) + tasks.make_records(tasks.TASKS_A, 50, 0), 300)
    folders = []
    for i, (width, layers) in enumerate([(32, 2), (48, 3)]):
        torch.manual_seed(i)
        lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, num_hidden_layers=layers,
                                          num_attention_heads=width // 16, num_key_value_heads=width // 16,
                                          intermediate_size=2 * width, max_position_embeddings=256,
                                          tie_word_embeddings=False))
        folder = root / f"llama{i}"
        lm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders.append(str(folder))
    return folders


def test_llama_config_runs_on_tiny_folders(tmp_path):
    work = make_workdir(tmp_path / "work")
    folders = write_tiny_folders(tmp_path / "models")
    over = dict(
        anchors=dict(folders=folders, check=False),  # random anchors: neither is better
        alpaca_json=str(FIXTURE), dtype="bf16", suite=dict(n_test=2),
        tokenizer=dict(max_length=96),
        ls_init=dict(max_tokens=256, batch_size=4),
        train=dict(epochs=2, batch_size=2, grad_checkpointing=True),
        deploy=dict(min_visits=0),
        eval=dict(max_new_tokens=4, batch_size=2, n_em=2, n_samples=1, n_mc=2, mc_choices=2),
    )
    paths = tmp_path / "paths.yaml"  # a user's second config file, merged over config/llama.yaml
    paths.write_text(yaml.safe_dump(dict(llm=over, device="cpu", seeds=[0])))
    snakemake(work, "--cores", "2", "--configfile", str(LLAMA), str(paths), "--", *TARGETS)
    cfg = yaml.safe_load(LLAMA.read_text())
    cfg["llm"]["anchors"]["folders"] = folders
    table = check_pareto(work / "results", cfg)
    assert table["params"].max() == sum(p.numel() for p in LlamaForCausalLM.from_pretrained(folders[1]).parameters())
    data = json.loads((work / "results" / "llm" / "data" / "data.json").read_text())
    assert data["encoding"]["test"]["examples"] == 2 and data["encoding"]["train"]["examples"] == 6
    # the paper's precision on this CPU (issue 22): bf16 anchors without autocast, fp32 trainables
    from esta.tensors import load_tensors_file

    run = work / "results" / "llm" / "esta" / "default" / "seed0"
    state, meta = load_tensors_file(run / "model.safetensors")
    assert meta["dtype"] == "bf16" and {t.dtype for t in state.values()} == {torch.float32}
    metrics = pd.read_csv(run / "metrics.csv")
    assert set(metrics["dtype"]) == {"bf16"} and set(metrics["trainable_dtype"]) == {"float32"}
    for folder in (run / "deployed").glob("stitch*"):
        assert json.loads((folder / "stitch_config.json").read_text())["dtype"] == "torch.bfloat16"
    check_lm_eval(work / "results", cfg)


def test_anchor_folders_of_different_vocabularies_are_refused_before_any_job(tmp_path):
    """Only the folders' config.json is read, when the DAG is planned: no job starts."""
    folders = []
    for i, vocab in enumerate((300, 320)):
        folder = tmp_path / f"llama{i}"
        LlamaConfig(vocab_size=vocab, hidden_size=32 * (i + 1), num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64).save_pretrained(folder)
        folders.append(str(folder))
    paths = tmp_path / "paths.yaml"
    paths.write_text(yaml.safe_dump(dict(llm=dict(anchors=dict(folders=folders)), device="cpu")))
    proc = snakemake(make_workdir(tmp_path / "work"), "-n", "--configfile", str(LLAMA), str(paths), "--", *TARGETS,
                     check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "different vocabularies" in out and folders[0] in out and folders[1] in out


def test_too_few_held_out_records_for_the_choices_are_refused_when_the_dag_is_planned(tmp_path):
    """A suite whose held-out set cannot give each multiple-choice item its distractors fails before any
    job, naming llm.suite.n_test and llm.eval.mc_choices (llm_prepare failed on record 0 otherwise)."""
    paths = tmp_path / "small.yaml"
    paths.write_text(yaml.safe_dump(dict(llm=dict(suite=dict(n_test=2), eval=dict(mc_choices=3)))))
    work = make_workdir(tmp_path / "work")
    proc = snakemake(work, "-n", "--configfile", str(SMOKE), str(paths), "--", *TARGETS, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "llm.suite.n_test = 2" in out and "llm.eval.mc_choices = 3" in out
    # no job ran: at most the code stamps the DAG build writes (esta.modules.stamp, results/.code)
    assert {f.name for f in (work / "results").glob("*")} <= {".code"}
    paths.write_text(yaml.safe_dump(dict(llm=dict(suite=dict(n_test=3), eval=dict(mc_choices=3)))))
    assert snakemake(work, "-n", "--configfile", str(SMOKE), str(paths), "--", *TARGETS).returncode == 0
