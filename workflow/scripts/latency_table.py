"""results/tables/latency.csv: the per-run latency of every deployed stitch (palette_latency,
palette_llm_latency), one row per (run, stitch, batch)."""

import pandas as pd

from esta import runtime

log = runtime.start_job(snakemake)
runs = snakemake.params.runs  # the tags of each input, in order
frames = [pd.read_csv(f).assign(**tags) for f, tags in zip(snakemake.input.latency, runs, strict=True)]
table = pd.concat(frames, ignore_index=True)
lead = ["family", "method", "variant", "task", "seed", "stitch_id", "batch", "median_ms", "torch_threads"]
table = table[lead + [c for c in table.columns if c not in lead]]
log.info("%d latencies of %d runs", len(table), len(frames))
runtime.write_csv(table, snakemake.output[0])
