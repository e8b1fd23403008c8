"""Least-squares initialisation of every LLM stitching layer on training tokens (spec §11 "LS init")."""

from esta import runtime
from esta.llm.build import encode, load_tokenizer, stitch_layer_state, stitched
from esta.tensors import save_tensors
from esta.llm.data import load_alpaca
from esta.llm.stitch import ls_init

log = runtime.start_job(snakemake)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
net, _ = stitched(p.folders, p.dtype, rule=p.stitch_rule)
tokenizer = load_tokenizer(inp.tokenizer)
ids, mask, _ = encode(load_alpaca(inp.train), tokenizer, p.tokenizer, inp.train)[0].tensors
b = p.ls_init["batch_size"]
batches = [(ids[i : i + b], mask[i : i + b]) for i in range(0, len(ids), b)]
residual = ls_init(net, batches, ridge=p.ls_init["ridge"], max_tokens=p.ls_init["max_tokens"])
log.info("LS residuals: %s", {k: round(v, 3) for k, v in residual.items()})
save_tensors(stitch_layer_state(net), out.stitch, dict(ls_init=p.ls_init, stitch_rule=p.stitch_rule, residual=residual))
runtime.write_json(out.info, dict(ls_init=p.ls_init, stitch_rule=p.stitch_rule, residual=residual,
                                  provenance=runtime.provenance()))
