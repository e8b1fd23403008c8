"""Which training-time score deploys good stitches? (spec §6, §9 `selection`, §10) For every run of
the default ESTA model, each deployment score judged like with like (``esta.compare``): Spearman rho
against test accuracy over the stitches every score can rank, and over the intervals the oracle fills
(a missed interval costed as its worst stitch) the mean deployed accuracy, the area under the deployed
accuracy-vs-log-FLOPs curve and its hypervolume; beside them the `oracle` (deploy by test accuracy, the
ceiling of any selector) and the `loss` score over a grid of windows and weightings recomputed from the
per-step history. Writes the summary (per score and task, mean over seeds, gap in area to `evaluate`,
seconds each score adds) and the per-stitch table the figure plots."""

import json

import numpy as np
import pandas as pd

from esta import runtime
from esta.pareto import deploy_by_score
from esta.compare import judge_run, summarize
from esta.scores import LOSS_GRID, LossWindow, gate_visits, window_loss

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
    selections, wall = {}, {}
    for j, how in enumerate(p.selections):
        scores = pd.read_csv(inp.scores[i * len(p.selections) + j])
        selections[how] = (scores, pd.read_csv(inp.deployed[i * len(p.selections) + j]))
        wall[how] = seconds(*p.bench[i][how])
        if how != "refreshed":  # stitches without a score (never visited, or none in the window) are left out
            scores = scores[np.isfinite(scores["score"].to_numpy(dtype=float))]
            per_stitch.append(scores.assign(**tag, selection=how, test_accuracy=scores["stitch_id"].map(test),
                                            visits=scores["stitch_id"].map(stats["visits"])))
    # the ceiling: deploy by test accuracy itself
    oracle, scores = deploy_by_score(stitches, "oracle", stitches["stitch_id"].map(test).to_numpy(), k)
    selections["oracle"] = (scores, oracle)
    ranked_by_all = list(selections)  # the rho set: stitches that every score of the run can rank
    # the `loss` score's window and weighting, from the per-step history (no training again), each gated
    # on its own window's visits
    history = pd.read_csv(inp.history[i])
    total = json.loads(open(inp.train[i]).read())["steps"]
    grid = {}
    for window, weighting in LOSS_GRID:
        loss = window_loss(history, n, total, LossWindow(window, weighting)).set_index("stitch_id").loc[
            stitches["stitch_id"]]
        label = f"loss {window:g} {weighting}"
        deployed, scores = deploy_by_score(stitches, "loss", loss["loss"].to_numpy(), k,
                                           visits=gate_visits("loss", loss), min_visits=p.min_visits)
        selections[label] = (scores, deployed)
        grid[label] = dict(window=window, weighting=weighting)
    for row in judge_run(stitches, test, selections, k, rank_over=ranked_by_all):
        how = row["selection"]
        runs.append(dict(tag, **row, **grid.get(how, {}), wall_s=0.0 if how in grid else wall.get(how, np.nan)))
per_run = pd.DataFrame(runs)
summary = summarize(per_run)
shown = ["selection", "rho", "rho_n", "accuracy", "auc", "hypervolume", "missed", "gap_points", "positive_tasks",
         "wall_s"]
log.info("per score, mean over tasks:\n%s", summary[summary["task"] == "mean"][shown].round(4).to_string(index=False))
runtime.write_csv(summary, out.summary)
runtime.write_csv(per_run, out.runs)
table = pd.concat(per_stitch, ignore_index=True).merge(stitches[["stitch_id", "front", "end", "gmacs"]], on="stitch_id")
table["anchor"] = table["front"] == table["end"]
rho = per_run[per_run["selection"].isin(table["selection"].unique())][["task", "seed", "selection", "rho"]]
table = table.merge(rho, on=["task", "seed", "selection"])
lead = ["task", "seed", "selection", "score_name", "stitch_id", "score", "test_accuracy", "rho", "visits"]
runtime.write_csv(table[lead + [c for c in table.columns if c not in lead]], out.stitches)
