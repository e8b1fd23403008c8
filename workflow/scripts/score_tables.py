"""Which training-time score deploys good stitches? (spec §6, §9 `selection`, §10) For every run of
the default ESTA model: each deployment score's Spearman rho against test accuracy over all stitches,
and the mean test accuracy of the stitches it deployed; beside them the `oracle` (deploy by test
accuracy, the ceiling of any selector) and the `loss` score over a grid of windows and weightings
recomputed from the per-step history. Writes the summary (per score and task, mean over seeds, gap to
`evaluate`, seconds each score adds) and the per-stitch table the figure plots."""

import json

import numpy as np
import pandas as pd

from esta import runtime
from esta.pareto import deploy_by_score
from esta.scores import LOSS_GRID, LossWindow, judge, summarize, window_loss

log = runtime.start_job(snakemake)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
stitches = pd.read_csv(inp.stitches)
n, k = len(stitches), p.intervals


def seconds(*files) -> float:
    return float(sum(pd.read_csv(f, sep="\t")["s"].sum() for f in files))


runs, per_stitch = [], []
for i, (task, seed) in enumerate(p.runs):
    test = pd.read_csv(inp.test[i]).set_index("stitch_id")["test_accuracy"]
    stats = pd.read_csv(inp.stats[i]).set_index("stitch_id")
    tag = dict(task=task, seed=seed)
    for j, how in enumerate(p.selections):
        scores = pd.read_csv(inp.scores[i * len(p.selections) + j])
        deployed = pd.read_csv(inp.deployed[i * len(p.selections) + j])
        wall = seconds(*p.bench[i][how])
        runs.append(dict(tag, selection=how, wall_s=wall, **judge(scores, deployed, test)))
        if how != "refreshed":  # stitches without a score (never visited, or none in the window) are left out
            scores = scores[np.isfinite(scores["score"].to_numpy(dtype=float))]
            per_stitch.append(scores.assign(**tag, selection=how, test_accuracy=scores["stitch_id"].map(test),
                                            visits=scores["stitch_id"].map(stats["visits"])))
    # the ceiling: deploy by test accuracy itself
    oracle, scores = deploy_by_score(stitches, "oracle", stitches["stitch_id"].map(test).to_numpy(), k)
    runs.append(dict(tag, selection="oracle", wall_s=np.nan, **judge(scores, oracle, test)))
    # the `loss` score's window and weighting, from the per-step history (no training again)
    history = pd.read_csv(inp.history[i])
    total = json.loads(open(inp.train[i]).read())["steps"]
    visits = stitches["stitch_id"].map(stats["visits"]).to_numpy()
    for window, weighting in LOSS_GRID:
        loss = window_loss(history, n, total, LossWindow(window, weighting)).set_index("stitch_id")["loss"]
        deployed, scores = deploy_by_score(stitches, "loss", stitches["stitch_id"].map(loss).to_numpy(), k,
                                           visits=visits, min_visits=p.min_visits)
        runs.append(dict(tag, selection=f"loss {window:g} {weighting}", window=window, weighting=weighting,
                         wall_s=0.0, **judge(scores, deployed, test)))
per_run = pd.DataFrame(runs)
summary = summarize(per_run)
log.info("per score, mean over tasks:\n%s",
         summary[summary["task"] == "mean"][["selection", "rho", "accuracy", "gap_points", "positive_tasks",
                                              "wall_s"]].round(4).to_string(index=False))
runtime.write_csv(summary, out.summary)
runtime.write_csv(per_run, out.runs)
table = pd.concat(per_stitch, ignore_index=True).merge(stitches[["stitch_id", "front", "end", "gmacs"]], on="stitch_id")
table["anchor"] = table["front"] == table["end"]
rho = per_run[per_run["selection"].isin(table["selection"].unique())][["task", "seed", "selection", "rho"]]
table = table.merge(rho, on=["task", "seed", "selection"])
lead = ["task", "seed", "selection", "score_name", "stitch_id", "score", "test_accuracy", "rho", "visits"]
runtime.write_csv(table[lead + [c for c in table.columns if c not in lead]], out.stitches)
