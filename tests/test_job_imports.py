"""Table, selection and plot jobs start without torch: the embedded default runs ~90 of them, and
importing torch, torchvision, timm and peft cost each one 3-6 s of a 2-core machine's time."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPTS = ROOT / "workflow" / "scripts"
# jobs that only read CSV/JSON and write tables or figures (select_esta, llm_select: unless the score needs a forward pass)
LIGHT = ["ablation_table", "accuracy_tables", "anchors_alone_table", "anchors_table", "deploy_by_accuracy",
         "grad_table", "score_tables", "llm_check_anchors", "llm_pareto_table", "llm_select", "llm_score_table",
         "all_stitches_table",
         "merge_benchmarks", "pareto_table", "pareto_task_tables", "plot", "resolve_config", "select_esta",
         "task_metrics", "visits_table"]


def top_level_imports(path) -> list[str]:
    """The modules a script imports at its top level (not inside functions or branches)."""
    mods = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            mods += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            mods.append(node.module)
    return mods


@pytest.mark.parametrize("script", LIGHT)
def test_light_job_imports_no_torch(script):
    mods = top_level_imports(SCRIPTS / f"{script}.py")
    assert mods, script
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "heavy = [m for m in ('torch', 'torchvision', 'timm', 'peft', 'transformers') if m in sys.modules]\n"
            + "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"{script}.py imports {mods}: {proc.stderr[-500:]}"


def test_threads_reach_torch_imported_after_start(tmp_path):
    """A job that imports torch only after runtime.start still gets the rule's thread count."""
    code = ("from esta import runtime\nruntime.start(None, 1)\nimport torch\nprint(torch.get_num_threads())\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == "1"
