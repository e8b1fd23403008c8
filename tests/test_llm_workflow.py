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
TARGETS = ["results/figures/llm_pareto.pdf", "results/figures/llm_pareto.png"]
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
    net, _ = stitched(folders, stitch_init=results / "llm" / "stitch_init.safetensors")
    model = assemble(net, cfg["llm"]["pst"], run / "model.safetensors").eval()
    deployed, tokenizer = load_stitch(run / "deployed" / f"stitch{sid}")
    ids = tokenizer(["### Instruction:\nCopy the digits. 123\n\n### Response:"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(deployed(ids), model(ids, None, sid), atol=1e-4)
    assert (run / "samples.csv").stat().st_size > 0
    return table


def test_smoke_llm_part_runs(tmp_path):
    work = make_workdir(tmp_path)
    snakemake(work, "--cores", "2", "--configfile", str(SMOKE), "--", *TARGETS)
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
        alpaca_json=str(FIXTURE), dtype="fp32", suite=dict(n_test=2),
        tokenizer=dict(max_length=96),
        ls_init=dict(max_tokens=256, batch_size=4),
        train=dict(epochs=2, batch_size=2, grad_checkpointing=True),
        deploy=dict(min_visits=0),
        eval=dict(max_new_tokens=4, batch_size=2, n_em=2, n_samples=1),
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
