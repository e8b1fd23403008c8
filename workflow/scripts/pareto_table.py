"""Accuracy vs FLOPs of deployed stitches (spec §9): the mean over tasks, each task, and the tidy
table of every deployed stitch. These are the CSV twins of the Pareto figures."""

import pandas as pd

from esta import runtime
from esta.pareto import deployed_curves

runtime.start_job(snakemake)
deployed = pd.concat([pd.read_csv(f) for f in snakemake.input], ignore_index=True)
deployed["anchor"] = deployed["front"] == deployed["end"]
runtime.write_csv(deployed_curves(deployed, by=["method"]), snakemake.output.pareto)
per_task = deployed_curves(deployed, by=["method", "task"])
runtime.write_csv(per_task, snakemake.output.tasks)
for task, out in zip(snakemake.params.tasks, snakemake.output.per_task):
    runtime.write_csv(per_task[per_task["task"] == task], out)
runtime.write_csv(deployed, snakemake.output.deployed)
