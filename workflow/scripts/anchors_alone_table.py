"""Each anchor trained alone on each task, from pretrained weights and from scratch, in the form of
the deployed-stitch tables (esta.vit.metrics.anchors_alone)."""

import json
import re

import pandas as pd

from esta import runtime
from esta.vit.metrics import anchors_alone

runtime.start_job(snakemake)
runs = [(int(re.search(r"anchor(\d+)\.json$", f).group(1)), json.loads(open(f).read())) for f in snakemake.input.runs]
manifests = [json.loads(open(f).read()) for f in snakemake.input.data]  # classes of custom tasks too
out = anchors_alone(runs, pd.read_csv(snakemake.input.stitches), {m["task"]: m["num_classes"] for m in manifests},
                    snakemake.params.groups)
runtime.write_csv(out, snakemake.output[0])
