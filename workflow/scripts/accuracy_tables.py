"""Accuracy of the deployed stitches per task and per group, mean ± std over seeds (spec §9)."""

import pandas as pd

from esta import runtime
from esta.vit.data import GROUPS
from esta.pareto import accuracy_by_group, accuracy_by_task

runtime.start_job(snakemake)
deployed = pd.read_csv(snakemake.input[0])
deployed = deployed[deployed["variant"] == "default"]
runtime.write_csv(accuracy_by_task(deployed), snakemake.output.by_task)
runtime.write_csv(accuracy_by_group(deployed, GROUPS), snakemake.output.by_group)
