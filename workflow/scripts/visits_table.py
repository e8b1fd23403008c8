"""Training visits of every stitch per method (esta.analysis.visit_table), from the runs' step logs."""

import pandas as pd

from esta import runtime
from esta.analysis import visit_counts, visit_table

runtime.start_job(snakemake)
stitches = pd.read_csv(snakemake.input.stitches)
deployed = pd.read_csv(snakemake.input.deployed)
deployed = deployed[deployed["variant"] == "default"]
frames = []
for (method, task, seed), log_file in zip(snakemake.params.runs, snakemake.input.logs):
    visits = visit_counts(pd.read_csv(log_file), len(stitches)).rename_axis("stitch_id").reset_index()
    chosen = deployed[(deployed["method"] == method) & (deployed["task"] == task) & (deployed["seed"] == seed)]
    frames.append(visits.assign(method=method, task=task, seed=seed,
                                deployed=visits["stitch_id"].isin(chosen["stitch_id"])))
runtime.write_csv(visit_table(pd.concat(frames, ignore_index=True), stitches), snakemake.output[0])
