"""The palette of one run before its latency is measured (spec §12; palette_latency adds it), for
either family (params.kind; the entry point's palette_family picks the family module): task tensors,
stitch table (costs, measured accuracy -- selection split where the run has it, else test -- score,
deployed, dominated), classes and transform or tokenizer, anchors by name and sha256."""

from esta import runtime
from esta.__main__ import palette_family
from esta.palette import bundle, read_table

log = runtime.start_job(snakemake)
p = snakemake.params
out = palette_family(p.kind).write_run(snakemake.output[0], snakemake.input, p, snakemake.wildcards)
if p.bundle:
    bundle(out)
table = read_table(out)
log.info("palette %s: %d stitches, %d deployed", out, len(table), int(table["deployed"].sum()))
