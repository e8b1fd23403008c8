"""Does training-time importance predict accuracy? (spec §10) Final I_s of every stitch against its
selection-split accuracy, one row per stitch, task and seed, with Spearman's rho of each task/seed."""

import pandas as pd

from esta import runtime
from esta.analysis import importance_vs_accuracy

log = runtime.start_job(snakemake)
stitches = pd.read_csv(snakemake.input.stitches)[["stitch_id", "front", "end", "gmacs"]]
frames = []
for (task, seed), stats, acc in zip(snakemake.params.runs, snakemake.input.stats, snakemake.input.accuracy):
    df, rho = importance_vs_accuracy(pd.read_csv(stats), pd.read_csv(acc))
    frames.append(df.merge(stitches, on="stitch_id").assign(task=task, seed=seed, spearman=rho))
    log.info("%s seed %s: Spearman rho %.3f over %d visited stitches", task, seed, rho, (df["visits"] > 0).sum())
out = pd.concat(frames, ignore_index=True)
out["anchor"] = out["front"] == out["end"]
lead = ["task", "seed", "stitch_id", "importance", "visits", "selection_accuracy", "spearman"]
runtime.write_csv(out[lead + [c for c in out.columns if c not in lead]], snakemake.output[0])
