"""bench/gpu.sh, the prepared GPU benchmark (issue 25): its --dry run on the CPU writes every row, finite
wherever a CPU can measure it, the numbers that do not depend on timing come out right, and the JSON
names the device; the peak table gives each known card its dense bf16 peak."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_bench import load_module

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.sh"

VIT = [
    f"vit_{name}{sfx}"
    for sfx in ("", "_ckpt")
    for name in ("pst_vs_full_step_time", "pst_vs_full_step_memory", "pst_step_time", "full_step_time",
                 "pst_step_memory", "full_step_memory")
] + [
    "vit_pst_vs_full_step_flops", "vit_pst_step_mfu_probe", "vit_pst_step_mfu_peak", "vit_pst_step_tflops",
    "vit_matmul_probe_tflops", "vit_all_stitches_prefix_flops", "vit_all_stitches_prefix_flops_min",
    "vit_all_stitches_prefix_time", "vit_all_stitches_reuse_time",
]
LLAMA = [
    "llama_build_time", "llama_stitch_params", "llama_trainable_params", "llama_step_time", "llama_tokens_per_s",
    "llama_step_memory", "llama_step_tflops", "llama_step_mfu_probe", "llama_step_mfu_peak", "llama_max_batch",
    "llama_max_batch_memory",
]
EXPECTED = VIT + LLAMA + ["workflow_dry_jobs"]
# A CPU has no allocator peak and no entry in the bf16 peak table: these, and only these, are NaN there.
NAN_ON_CPU = {"vit_pst_step_mfu_peak", "llama_step_memory", "llama_step_mfu_peak", "llama_max_batch_memory"}


def load_gpu_bench():
    return load_module(REPO / "bench" / "gpu.py", "bench_gpu")


def test_peak_table_knows_the_cards():
    gpu = load_gpu_bench()
    for name, tflops in [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
                         ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100 80GB PCIe", 312)]:
        assert gpu.peak_tflops(name)[0] == tflops, name
    value, note = gpu.peak_tflops("Tesla T4")
    assert math.isnan(value) and "Tesla T4" in note


def test_dry_run_writes_every_row(tmp_path):
    out = tmp_path / "out"
    # gpu.sh runs the checkout's .venv, else the python3 on PATH: make that this interpreter
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(SCRIPT), "--dry", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    with open(out / "gpu.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["benchmark", "value", "target", "unit", "met"]
        rows = list(reader)
    assert [r["benchmark"] for r in rows] == EXPECTED
    values = {r["benchmark"]: float(r["value"]) for r in rows}
    for r in rows:
        name, value = r["benchmark"], values[r["benchmark"]]
        assert math.isnan(value) if name in NAN_ON_CPU else math.isfinite(value), r
        assert r["met"] in ("true", "false") and r["target"] and r["unit"], r
        assert name in proc.stdout

    info = json.loads((out / "gpu.json").read_text())
    assert info["machine"]["device"] == "cpu" and info["machine"]["device_name"]
    assert info["machine"]["torch"] == torch.__version__ and info["machine"]["transformers"]
    run = info["run"]
    assert run["dry"] is True and run["settings"]["llama_family"] == "tiny"
    assert {name: part["ok"] for name, part in run["parts"].items()} == dict(vit=True, llama=True, workflow=True)
    assert run["checks_passed"] == ["prefix_predictions_equal"]
    assert math.isnan(run["peak_bf16_tflops"]) and "peak table" in run["peak_note"]
    assert set(run["notes"]) == set(EXPECTED)

    # What does not depend on timing, each against a second computation of it rather than a pinned number.
    assert 0.6 <= values["vit_pst_vs_full_step_flops"] < 0.75
    # FLOPs counted by torch over prefix reuse = the analytic minimum from esta's per-block MACs
    assert values["vit_all_stitches_prefix_flops"] == pytest.approx(values["vit_all_stitches_prefix_flops_min"],
                                                                    abs=0.005)
    assert values["vit_all_stitches_prefix_flops_min"] < 1.0
    assert values["vit_pst_vs_full_step_memory"] < 0.5 and values["vit_pst_vs_full_step_memory_ckpt"] < 0.5
    assert values["vit_pst_step_memory_ckpt"] < values["vit_pst_step_memory"]
    assert values["vit_pst_step_mfu_probe"] > 0
    # the tiny pair: the stitch nearest the anchors' mean size and the PST trainables, as esta's cost table
    # and meta-device count give them for llama.yaml's llm.pst
    import yaml

    from esta.llm.anchors import build_family
    from esta.llm.costs import stitch_costs
    from esta.llm.tuning import LlamaTuningConfig, family_trainable

    settings = run["settings"]
    with torch.device("meta"):
        costs = stitch_costs(build_family(settings["llama_family"]), ["small", "large"])
    middle = costs.loc[costs["front"] == costs["end"], "params"].mean()
    stitches = costs[costs["front"] != costs["end"]]
    nearest = stitches.loc[(stitches["params"] - middle).abs().idxmin(), "params"]
    assert values["llama_stitch_params"] == nearest
    pst = yaml.safe_load((REPO / "config" / "llama.yaml").read_text())["llm"]["pst"]
    trainable = family_trainable(settings["llama_family"], LlamaTuningConfig(**pst))["total"]
    assert values["llama_trainable_params"] == trainable
    tokens = settings["llama_batch"] * settings["llama_seq"]
    assert values["llama_tokens_per_s"] * values["llama_step_time"] == pytest.approx(tokens, rel=1e-3)
    # a CPU never runs out of GPU memory: the search doubles the batch until its bound
    tries = settings["max_batch_tries"]
    if f"no OOM within {tries} doublings" in run["notes"]["llama_max_batch"]:
        assert values["llama_max_batch"] == settings["llama_batch"] * 2**tries
    else:  # the time budget stopped it first
        assert "budget" in run["notes"]["llama_max_batch"]
        assert values["llama_max_batch"] in {settings["llama_batch"] * 2**i for i in range(tries)}
    # part 3 planned the smoke workflow with device=cuda up to the deployed table
    assert values["workflow_dry_jobs"] >= 5
    log = (out / "workflow.log").read_text()
    assert "device=cuda" in log and "evaluate_deployed" in log
