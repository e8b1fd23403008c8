"""All gradient-interference cosines (spec §10) in one table, with and without stitch biases."""

import pandas as pd

from esta import runtime
from esta.analysis import summarize_cosines

log = runtime.start_job(snakemake)
df = pd.concat([pd.read_csv(f) for f in snakemake.input], ignore_index=True)
if df["cosine"].isna().any() or df.empty:
    raise ValueError("gradient cosines are missing or NaN")
log.info("summary:\n%s", summarize_cosines(df, ["stitch_biases", "frac"]).to_string())
runtime.write_csv(df, snakemake.output[0])
