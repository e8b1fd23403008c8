"""The dip's controls on one task and seed (issue 31, docs/results.md "Why the middle of the palette dips"):
test accuracy of the stitches and anchors of the default ESTA palette beside the same stitches in
variants trained differently — a variant with sampler kind ``fixed`` (one stitch trained alone with all
of the palette's optimizer steps) and ``one_4x`` (the palette with 4x the steps) — each with its training
visits. Reads a workflow's results folder; trains nothing. The variants' runs come from the workflow, e.g.

    printf 'variants:\\n  alone: {esta: {sampler: {kind: fixed, stitch: 28}}}\\n' > alone.yaml
    snakemake --configfile alone.yaml -- results/esta/alone/embedded/digits/seed0/tuning/stitch_accuracy_test.csv

    python bench/dip_alone.py results --task embedded/digits --seed 0 --variant alone [--variant one_4x] [--out f.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd


def run_table(results: Path, variant: str, task: str, seed: int) -> pd.DataFrame:
    """stitch_id, test_accuracy, visits of one trained ESTA model, and the sampler it was trained with."""
    run = results / "esta" / variant / task / f"seed{seed}" / "tuning"
    for name in ("stitch_accuracy_test.csv", "importance.csv", "train.json"):
        if not (run / name).is_file():
            sys.exit(f"{run / name} is missing: run the workflow's target "
                     f"{run.relative_to(results.parent) / 'stitch_accuracy_test.csv'} first")
    acc = pd.read_csv(run / "stitch_accuracy_test.csv")[["stitch_id", "test_accuracy"]]
    visits = pd.read_csv(run / "importance.csv")[["stitch_id", "visits"]]
    info = json.loads((run / "train.json").read_text())
    return acc.merge(visits, on="stitch_id").assign(variant=variant, steps=info["steps"])


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="the workflow's results folder")
    ap.add_argument("--task", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variant", action="append", required=True, help="a trained ESTA variant (repeat)")
    ap.add_argument("--out", type=Path, help="write the table as CSV here")
    a = ap.parse_args(argv)
    stitches = pd.read_csv(a.results / "tables" / "stitches.csv")
    default = run_table(a.results, "default", a.task, a.seed)
    rows = []
    for variant in a.variant:
        other = run_table(a.results, variant, a.task, a.seed)
        trained = other[other["visits"] > 0]  # kind fixed: the one stitch; one_4x: every stitch
        for r in trained.itertuples():
            s = stitches.set_index("stitch_id").loc[r.stitch_id]
            ends = sorted({int(s["front"]), int(s["end"])})
            here = default.set_index("stitch_id")
            rows.append(dict(
                task=a.task, seed=a.seed, variant=variant, stitch_id=r.stitch_id, name=s["name"], gmacs=s["gmacs"],
                anchor=s["front"] == s["end"], steps=int(r.steps), visits=int(r.visits),
                accuracy=r.test_accuracy, default_visits=int(here.loc[r.stitch_id, "visits"]),
                default_accuracy=here.loc[r.stitch_id, "test_accuracy"],
                default_anchor_accuracy=" / ".join(f"{here.loc[e, 'test_accuracy']:.3f}" for e in ends),
                default_steps=int(default["steps"].iloc[0])))
    table = pd.DataFrame(rows)
    if table.empty:
        sys.exit(f"no stitch of {a.variant} was visited")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string(index=False))
    if a.out:
        table.to_csv(a.out, index=False)
    return table


if __name__ == "__main__":
    main()
