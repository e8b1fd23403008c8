"""One task's deployed curves (the CSV twin of its figure), with the anchors trained alone, from
pretrained weights and from scratch, as reference points beside them."""

import pandas as pd

from esta import runtime
from esta.pareto import deployed_curves

runtime.start_job(snakemake)
controls = deployed_curves(pd.read_csv(snakemake.input.controls), by=["method", "task"])
per_task = pd.concat([pd.read_csv(snakemake.input.tasks), controls], ignore_index=True)
for task, out in zip(snakemake.params.tasks, snakemake.output.per_task):
    runtime.write_csv(per_task[per_task["task"] == task], out)
