"""Export every deployed Stitched LLaMA stitch as a self-contained folder (esta.llm.export)."""

import os
import shutil
from pathlib import Path

import pandas as pd

from esta import runtime
from esta.llm.build import assemble, load_tokenizer, stitched
from esta.llm.export import export_stitch

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
net, _ = stitched(p.folders, p.dtype, stitch_init=inp.stitch, rule=p.stitch_rule)
model = assemble(net, p.pst, inp.model)
tokenizer = load_tokenizer(inp.tokenizer)
deployed = pd.read_csv(inp.deployed)
tmp = Path(f"{out[0]}.tmp-{os.getpid()}")
shutil.rmtree(tmp, ignore_errors=True)
for row in deployed.itertuples():
    extra = dict(seed=int(w.seed), variant=w.variant, pst=p.pst, importance=row.score, reason=row.reason)
    export_stitch(model, row.stitch_id, tmp / f"stitch{row.stitch_id}", tokenizer, extra)
shutil.rmtree(out[0], ignore_errors=True)
os.replace(tmp, out[0])
log.info("exported %d stitches to %s", len(deployed), out[0])
