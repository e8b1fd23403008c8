"""Latency of every deployed Stitched LLaMA stitch on this machine (spec §11, §12): a forward over
`seq_len` tokens at batch 1 and 32, median of repeated runs after untimed warm-up, threads fixed."""

import pandas as pd
import torch

from esta import runtime
from esta.llm.build import assemble, stitched
from esta.llm.palette import forward
from esta.palette import measure_latency

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
net, _ = stitched(p.folders, p.dtype, stitch_init=inp.stitch, rule=p.stitch_rule)
model = assemble(net, p.pst, inp.model).eval()
gen = torch.Generator().manual_seed(0)
vocab = net.anchors[0].config.vocab_size
inputs = {b: torch.randint(0, vocab, (b, p.latency["seq_len"]), generator=gen) for b in (1, 32)}
ids = pd.read_csv(inp.deployed)["stitch_id"].tolist()
table = measure_latency(lambda sid, x: forward(model, sid, x), inputs, ids, p.latency["repeats"], p.latency["warmup"])
table = table.assign(seq_len=p.latency["seq_len"], **runtime.provenance("cpu"))
log.info("\n%s", table[["stitch_id", "batch", "median_ms"]].to_string(index=False))
runtime.write_csv(table, snakemake.output[0])
