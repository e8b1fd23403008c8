"""The Stitched LLaMA palette of one run before its latency is measured (spec §11, §12; palette_latency
adds it): task tensors, stitch table (parameters, MACs per token, score, exact match as the measured
accuracy, deployed, dominated), tokenizer, anchors by name and sha256."""

import pandas as pd

from esta import runtime
from esta.llm.build import assemble, stitched
from esta.llm.palette import write
from esta.palette import bundle, stitch_table
from esta.tensors import read_meta

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
net, _ = stitched(p.folders, p.dtype, stitch_init=inp.stitch, rule=p.stitch_rule)
model = assemble(net, p.pst, inp.model)
# test accuracy of a deployed stitch: greedy exact match on the held-out records (llm_evaluate)
test = pd.read_csv(inp.metrics).rename(columns={"em": "test_accuracy"})
table = stitch_table(pd.read_csv(inp.stitches), pd.read_csv(inp.deployed), None, test)
settings = dict(variant=w.variant, seed=int(w.seed), test_accuracy="exact match, held-out records",
                training=read_meta(inp.model), provenance=runtime.provenance())
out = write(snakemake.output[0], model, table, folders=p.folders, dtype=p.dtype, rule=p.stitch_rule, pst=p.pst,
            tokenizer=inp.tokenizer, settings=settings)
if p.bundle:
    bundle(out)
log.info("palette %s: %d stitches, %d deployed", out, len(table), int(table["deployed"].sum()))
