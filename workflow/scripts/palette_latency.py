"""Latency of every deployed stitch of one run on this machine (spec §12): the trained model as its
palette loads it, batch 1 and 32, median of repeated forwards after untimed warm-up, torch threads
fixed by the rule."""

import pandas as pd
import torch

from esta import runtime
from esta.palette import measure_latency
from esta.vit.anchors import family_at
from esta.vit.build import assemble, read_manifest, tuning_config
from esta.vit.palette import forward

log = runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
model = assemble(family_at(p.family, p.img_size), read_manifest(inp.data)["num_classes"], inp.anchors, inp.stitch,
                 tuning_config(w.method, p.method[w.method]), state_file=inp.model).eval()
gen = torch.Generator().manual_seed(0)  # latency does not depend on the pixels
inputs = {b: torch.randn(b, 3, p.img_size, p.img_size, generator=gen) for b in (1, 32)}
ids = pd.read_csv(inp.deployed)["stitch_id"].tolist()
table = measure_latency(lambda sid, x: forward(model, sid, x), inputs, ids, p.latency["repeats"], p.latency["warmup"])
table = table.assign(**runtime.provenance("cpu"))  # torch_threads, device, versions
log.info("\n%s", table[["stitch_id", "batch", "median_ms"]].to_string(index=False))
runtime.write_csv(table, snakemake.output[0])
