"""Each anchor trained alone on each task, from pretrained weights and from scratch, in the form of
the deployed-stitch tables (esta.vit.metrics.anchors_alone)."""

import json
import re

import pandas as pd

from esta import runtime
from esta.vit.tasks import task_info
from esta.vit.metrics import anchors_alone

runtime.start_job(snakemake)
runs = [(int(re.search(r"anchor(\d+)\.json$", f).group(1)), json.loads(open(f).read())) for f in snakemake.input.runs]
tasks = {r["task"] for _, r in runs}
out = anchors_alone(runs, pd.read_csv(snakemake.input.stitches), {t: task_info(t).num_classes for t in tasks},
                    {t: task_info(t).group for t in tasks})
runtime.write_csv(out, snakemake.output[0])
