"""Merge Snakemake's benchmark files into one table: wall time and memory of every heavy job."""

from pathlib import Path

import pandas as pd

from esta import runtime

runtime.start_job(snakemake)
frames = []
for f in snakemake.input:
    parts = Path(f).with_suffix("").parts
    rel = Path(*parts[parts.index("benchmarks") + 1 :])  # <rule>/<job wildcards...>
    frames.append(pd.read_csv(f, sep="\t").assign(rule=rel.parts[0], job="/".join(rel.parts[1:])))
df = pd.concat(frames, ignore_index=True)
lead = ["rule", "job", "s", "max_rss", "cpu_time"]
runtime.write_csv(df[lead + [c for c in df.columns if c not in lead]], snakemake.output[0])
