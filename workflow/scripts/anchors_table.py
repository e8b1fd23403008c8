"""Upstream accuracy, size and training time of each pretrained anchor, one row per anchor."""

import json

import pandas as pd

from esta import runtime

runtime.start_job(snakemake)
rows = [json.loads(open(f).read()) for f in snakemake.input]
cols = ["anchor", "timm_name", "params", "num_classes", "accuracy", "steps", "wall_s", "peak_rss_mb"]
df = pd.DataFrame(rows)[cols].rename(columns={"accuracy": "upstream_val_accuracy", "num_classes": "upstream_classes"})
runtime.write_csv(df, snakemake.output[0])
