"""Accuracy of the deployed stitches per task and per group, mean ± std over seeds (spec §9), beside
the anchors trained alone from pretrained weights (`anchor_ft`) and from scratch (`scratch`).

Column `metric` of accuracy_by_task.csv names what `accuracy_*` holds: `accuracy` (top-1, the
classification tasks) or `miou` (the dense tasks of spec §14 when `dense.enabled`: task
`dense/<name>`, group `dense`, the test mIoU of each run's deployed stitches, and `anchor_ft` from each
anchor fine-tuned alone with its SETR head, SN-Net's adapt step). accuracy_by_group.csv averages the
classification tasks only: a mean over accuracies and mIoUs would mean nothing."""

import pandas as pd

from esta import runtime
from esta.pareto import accuracy_by_group, accuracy_by_task
from esta.vit.seg_tables import accuracy_rows
from esta.vit.tasks import GROUPS

runtime.start_job(snakemake)
inp = snakemake.input
deployed = pd.read_csv(inp.deployed)
deployed = deployed[deployed["variant"] == "default"]
# rows anchor_ft / scratch: the anchors fine-tuned alone, from pretrained weights (every anchor) / from
# scratch (those controls.scratch names); the `deployed` column counts the models a row averages
deployed = pd.concat([deployed, pd.read_csv(inp.controls)], ignore_index=True)
by_task = accuracy_by_task(deployed).assign(metric="accuracy")
if snakemake.params.dense:  # esta.vit.seg_tables
    dense = accuracy_by_task(accuracy_rows(inp.dense_deployed, inp.dense_adapt)).assign(metric="miou")
    by_task = pd.concat([by_task, dense], ignore_index=True)
runtime.write_csv(by_task[["metric", *[c for c in by_task.columns if c != "metric"]]], snakemake.output.by_task)
# the paper's groups first, then those of custom tasks (config datasets.<name>.group)
groups = (*GROUPS, *sorted(set(deployed["group"]) - set(GROUPS)))
runtime.write_csv(accuracy_by_group(deployed, groups), snakemake.output.by_group)
