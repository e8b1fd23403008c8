"""Config checks of the Stitched LLaMA slice the workflow runs before any job (spec §11, issue 32):
anchor folders that cannot be stitched (``check_folders``) and too few held-out records for the
multiple-choice items (``check_choices``). Torch-free on purpose: workflow/rules/llm_common.smk calls
them at every DAG build, dry runs included, and importing them from ``esta.llm.anchors`` /
``esta.llm.evaluate`` (torch, transformers) cost 5-10 s of CPU per build. Both modules re-export them.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["check_folders", "check_choices"]


def _folder_configs(folders: list[str | Path | None]) -> list[dict] | None:
    """The ``config.json`` of every anchor folder, or None when a folder or its config is missing
    (left to the job that loads it, whose error names the layout)."""
    configs = [Path(f) / "config.json" for f in folders if f is not None]
    if len(configs) != len(folders) or not all(c.is_file() for c in configs):
        return None
    return [json.loads(c.read_text()) for c in configs]


def check_folders(folders: list[str | Path]) -> None:
    """Refuse, before any job, anchor folders whose ``config.json`` say they cannot be stitched: a
    different ``vocab_size`` (no shared token space) or widths not ordered small to large. Folders
    without a ``config.json`` are left to the job that loads them (its error names the layout)."""
    shapes = _folder_configs(folders)
    if shapes is None:
        return
    vocab = [c.get("vocab_size") for c in shapes]
    if len(set(vocab)) != 1:
        raise ValueError(f"config llm.anchors.folders: anchors {[str(f) for f in folders]} have different "
                         f"vocabularies (vocab_size {vocab}); stitching needs one token space")
    widths = [c.get("hidden_size") for c in shapes]
    if widths != sorted(widths):
        raise ValueError(f"config llm.anchors.folders: anchors must be ordered small to large; widths of "
                         f"{[str(f) for f in folders]} are {widths}")


def check_choices(n_test: int, n_mc: int, mc_choices: int) -> None:
    """The multiple-choice items are the first ``n_mc`` of the ``n_test`` held-out records, each with
    ``mc_choices - 1`` distractors drawn from the other items' outputs (``esta.llm.tasks.choice_items``):
    fewer than ``mc_choices`` items cannot give every one its distractors. Raised before any job runs,
    naming the keys (``llm_prepare`` would fail on its first record otherwise)."""
    items = min(n_test, n_mc)
    if items < mc_choices:
        which = "llm.suite.n_test" if n_test <= n_mc else "llm.eval.n_mc"
        raise ValueError(f"{which} = {items} held-out records give {items} multiple-choice items, fewer than "
                         f"llm.eval.mc_choices = {mc_choices}: each item needs {mc_choices - 1} distractors from the "
                         f"other items' outputs (llm.suite.n_test = {n_test}, llm.eval.n_mc = {n_mc}); raise "
                         f"{which} or lower llm.eval.mc_choices")
