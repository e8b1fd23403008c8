"""The palette of one run with its latency columns (spec §12): the unprofiled palette loaded as a user
loads it, every deployed stitch timed on this machine through the served path (esta.profile: batch 1
and 32, median after untimed warm-up, torch threads fixed by the rule), for both families (the entry
point's palette_family picks the family module the palette's kind names)."""

from esta import runtime
from esta.__main__ import palette_family
from esta.palette import read_meta
from esta.profile import profile_folder

log = runtime.start_job(snakemake)
p, src = snakemake.params, snakemake.input.palette
family = palette_family(read_meta(src)["kind"])
table = profile_folder(src, snakemake.output.palette, family, p.latency["repeats"], p.latency["warmup"],
                       seq_len=p.latency["seq_len"])
log.info("\n%s", table[["stitch_id", "batch", "median_ms"]].to_string(index=False))
runtime.write_csv(table, snakemake.output.latency)
