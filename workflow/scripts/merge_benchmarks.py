"""Merge Snakemake's benchmark files into one table: wall time and memory of every heavy job."""

from esta import runtime

runtime.start_job(snakemake)
runtime.write_csv(runtime.read_benchmarks(snakemake.input), snakemake.output[0])
