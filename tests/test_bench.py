"""bench/run.py (and the benchmark modules beside it): the quick run writes one well-formed row per
benchmark, and its correctness checks really ran and really fail on mismatching outputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "run.py"
BENCHMARKS = [
    "pst_vs_full_step_time",
    "pst_vs_full_step_flops",
    "pst_vs_full_step_memory",
    "anchor_id_vs_timm_time",
    "stitch_vs_parts_time",
    "all_stitches_prefix_flops",
    "all_stitches_prefix_time",
    "stitch_flops_table_time",
    "train_mfu_cpu",
    "palette_switch_vs_forward",
    "pst_ckpt_vs_plain_memory",
    "pst_vs_full_memory_ckpt",
    "pst_ckpt_vs_plain_step_flops",
    "pst_ckpt_vs_plain_step_time",
    *(f"{m}_{what}" for m in ("dora", "ia3", "adapter", "adaptformer")
      for what in ("vs_full_step_time", "vs_full_step_memory", "trainable_params")),
]
CHECKS = ["anchor_ids_equal_timm", "stitch_equals_parts", "prefix_predictions_equal"]


def load_module(path: Path, name: str):
    """A benchmark script imported as module ``name`` (bench/ is not a package on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_bench():
    return load_module(SCRIPT, "bench_run")


def test_check_same_raises_on_mismatch():
    bench = load_bench()
    x = torch.randn(2, 5)
    bench.check_same("equal", x, x.clone())
    bench.check_same("dict", {1: x}, {1: x.clone()})
    with pytest.raises(bench.MismatchError, match="outputs differ"):
        bench.check_same("perturbed", x + 1e-2, x)
    with pytest.raises(bench.MismatchError, match="shape"):
        bench.check_same("shape", x[:1], x)
    with pytest.raises(bench.MismatchError, match=r"dict\[2\]"):
        bench.check_same("dict", {1: x, 2: x + 1}, {1: x, 2: x})
    with pytest.raises(bench.MismatchError, match="keys"):
        bench.check_same("keys", {1: x}, {2: x})


def test_quick_run_writes_results(tmp_path):
    out = tmp_path / "results.csv"
    # One thread: on a shared CI box two OpenMP threads stall each other whenever a neighbour runs.
    cmd = [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["benchmark", "value", "target", "unit", "met"]
        rows = list(reader)
    names = [r["benchmark"] for r in rows]
    for name in BENCHMARKS:
        assert names.count(name) == 1, f"{name} appears {names.count(name)} times in {names}"
    assert len(set(names)) == len(names)
    for r in rows:
        assert math.isfinite(float(r["value"])), r
        assert r["met"] in ("true", "false"), r
        assert r["target"] and r["unit"], r
        assert r["benchmark"] in proc.stdout

    info = json.loads((tmp_path / "machine.json").read_text())
    assert info["machine"]["cores"] >= 1 and info["machine"]["torch"] == torch.__version__
    assert info["machine"]["device"] == "cpu"
    assert info["run"]["quick"] is True
    assert info["run"]["checks_passed"] == CHECKS
    # The FLOPs rows do not depend on timing noise: pin them.
    values = {r["benchmark"]: float(r["value"]) for r in rows}
    assert values["all_stitches_prefix_flops"] == pytest.approx(0.798, abs=0.005)
    assert 0.6 <= values["pst_vs_full_step_flops"] < 0.75
    # Byte counts do not either: checkpointing keeps only block inputs (params dominate at batch 2).
    assert values["pst_ckpt_vs_plain_memory"] == pytest.approx(0.84, abs=0.01)
    assert values["pst_vs_full_memory_ckpt"] < 0.5
    assert values["pst_ckpt_vs_plain_step_flops"] == pytest.approx(1.33, abs=0.01)  # one more forward
