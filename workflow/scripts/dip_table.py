"""Why the middle of the palette dips (issue 31; spec §10): for every stitch of every run of the default
ESTA model, its test accuracy beside what the method gave it — training visits (all, and inside the
`loss` window), its deployment slot and how many stitches share that slot, the relative residual of its
stitching layer's least-squares fit (ls_init), its position (front block j, end block k) and cost — and,
per task and anchor pair, how many of the pair's stitches fall below both of its anchors and Spearman's
rho of accuracy against visits, LS residual and cost over the pair's stitches.

Writes the per-stitch table (``dip.csv``) and the summary per task and pair, mean over seeds, with the
mean over tasks as task "mean" (``dip_summary.csv``)."""

import numpy as np
import pandas as pd

from esta import runtime
from esta.pareto import deployment_slots
from esta.scores import spearman
from esta.tensors import read_meta

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
stitches = pd.read_csv(inp.stitches)
slots = pd.Series(deployment_slots(stitches, p.intervals), index=stitches["stitch_id"].to_numpy())
slot_size = slots.map(slots.value_counts())
names = {int(r.front): r.name for r in stitches[stitches["front"] == stitches["end"]].itertuples()}

frames = []
for i, (task, seed) in enumerate(p.runs):
    acc = pd.read_csv(inp.test[i]).set_index("stitch_id")["test_accuracy"]
    stats = pd.read_csv(inp.stats[i]).set_index("stitch_id")
    residual = read_meta(inp.init[i])["residual"]  # "pair.layer" -> mean relative residual of its positions
    t = stitches[["stitch_id", "front", "end", "j", "k", "layer", "gmacs"]].copy()
    t["anchor"] = t["front"] == t["end"]
    t["test_accuracy"] = t["stitch_id"].map(acc)
    t["visits"] = t["stitch_id"].map(stats["visits"])
    t["loss_visits"] = t["stitch_id"].map(stats["loss_visits"])
    t["slot"] = t["stitch_id"].map(slots)
    t["slot_size"] = t["stitch_id"].map(slot_size)
    t["ls_residual"] = [np.nan if a else residual.get(f"{f}.{layer}", np.nan)
                        for a, f, layer in zip(t["anchor"], t["front"], t["layer"])]
    missing = t[~t["anchor"] & t["ls_residual"].isna()]
    if len(missing):
        raise ValueError(f"{inp.init[i]}: no LS residual for stitching layers "
                         f"{sorted(set(zip(missing['front'], missing['layer'])))}")
    lo_anchor, hi_anchor = t["front"].map(acc), t["end"].map(acc)  # the pair's two anchors (front, end)
    t["front_anchor_accuracy"], t["end_anchor_accuracy"] = lo_anchor, hi_anchor
    t["below_both"] = ~t["anchor"] & (t["test_accuracy"] < np.minimum(lo_anchor, hi_anchor))
    frames.append(t.assign(task=task, seed=seed))
per_stitch = pd.concat(frames, ignore_index=True)

rows = []
for (task, seed, front), g in per_stitch[~per_stitch["anchor"]].groupby(["task", "seed", "front"], sort=False):
    a = g["test_accuracy"].to_numpy()
    end = int(g["end"].iloc[0])
    anchors = per_stitch[(per_stitch["task"] == task) & (per_stitch["seed"] == seed) & per_stitch["anchor"]]
    anchors = anchors.set_index("front")
    rows.append(dict(
        task=task, seed=seed, pair=f"{names[front]}->{names[end]}", stitches=len(g),
        front_anchor=anchors.loc[front, "test_accuracy"], end_anchor=anchors.loc[end, "test_accuracy"],
        stitch_mean=a.mean(), stitch_min=a.min(), stitch_max=a.max(), below_both=int(g["below_both"].sum()),
        anchor_visits=anchors.loc[[front, end], "visits"].mean(), stitch_visits=g["visits"].mean(),
        stitch_visits_min=g["visits"].min(),
        rho_visits=spearman(g["visits"], a), rho_loss_visits=spearman(g["loss_visits"], a),
        rho_ls_residual=spearman(g["ls_residual"], a), rho_gmacs=spearman(g["gmacs"], a),
        rho_j=spearman(g["j"], a)))
runs = pd.DataFrame(rows)
measures = [c for c in runs.columns if c not in ("task", "seed", "pair")]
per_task = runs.groupby(["task", "pair"], sort=False, as_index=False)[measures].mean()  # NaN rho left out
per_task["seeds"] = runs.groupby(["task", "pair"], sort=False)["seed"].nunique().to_numpy()
overall = per_task.groupby("pair", sort=False, as_index=False)[measures].mean().assign(task="mean")
overall["seeds"] = per_task.groupby("pair", sort=False)["seeds"].min().to_numpy()
summary = pd.concat([per_task, overall], ignore_index=True)
log.info("per pair, mean over tasks:\n%s", overall.round(3).to_string(index=False))
runtime.write_csv(per_stitch, snakemake.output.stitches)
runtime.write_csv(summary, snakemake.output.summary)
