"""Accuracy vs FLOPs of deployed stitches (spec §9): the mean over tasks (the CSV twin of the main
figure), each task, and the tidy table of every deployed stitch."""

import pandas as pd

from esta import runtime
from esta.pareto import deployed_curves

runtime.start_job(snakemake)
deployed = pd.concat([pd.read_csv(f) for f in snakemake.input.metrics], ignore_index=True)
deployed["anchor"] = deployed["front"] == deployed["end"]
runtime.write_csv(deployed_curves(deployed, by=["method"]), snakemake.output.pareto)
runtime.write_csv(deployed_curves(deployed, by=["method", "task"]), snakemake.output.tasks)
runtime.write_csv(deployed, snakemake.output.deployed)
