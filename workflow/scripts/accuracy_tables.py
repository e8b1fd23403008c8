"""Accuracy of the deployed stitches per task and per group, mean ± std over seeds (spec §9), beside
the anchors trained alone from pretrained weights (`anchor_ft`) and from scratch (`scratch`)."""

import pandas as pd

from esta import runtime
from esta.vit.tasks import GROUPS
from esta.pareto import accuracy_by_group, accuracy_by_task

runtime.start_job(snakemake)
deployed = pd.read_csv(snakemake.input.deployed)
deployed = deployed[deployed["variant"] == "default"]
# rows anchor_ft / scratch: the anchors fine-tuned alone, from pretrained weights (every anchor) / from
# scratch (those controls.scratch names); the `deployed` column counts the models a row averages
deployed = pd.concat([deployed, pd.read_csv(snakemake.input.controls)], ignore_index=True)
runtime.write_csv(accuracy_by_task(deployed), snakemake.output.by_task)
# the paper's groups first, then those of custom tasks (config datasets.<name>.group)
groups = (*GROUPS, *sorted(set(deployed["group"]) - set(GROUPS)))
runtime.write_csv(accuracy_by_group(deployed, groups), snakemake.output.by_group)
