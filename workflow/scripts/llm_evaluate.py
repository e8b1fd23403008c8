"""Evaluate Stitched LLaMA on the held-out adaptation records: every deployed ESTA stitch
(llm_evaluate) or one individually adapted anchor (llm_evaluate_anchor): masked NLL, perplexity and
greedy exact match per stitch, plus every stitch's answers to a fixed prompt set."""

import pandas as pd

from esta import runtime
from esta.llm import evaluate as ev
from esta.llm.build import assemble, evaluate, load_tokenizer, stitched
from esta.llm.data import load_alpaca
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
alone = snakemake.rule == "llm_evaluate_anchor"
net, _ = stitched(p.folders, p.dtype, stitch_init=None if alone else inp.stitch,
                  anchors=[int(w.i)] if alone else None, rule=p.stitch_rule)
model = assemble(net, p.pst, inp.model).to(pick_device(p.device))
tokenizer = load_tokenizer(inp.tokenizer)
test = load_alpaca(inp.test)
stitches = pd.read_csv(inp.stitches)
# an anchor alone is stitch 0 of its one-anchor model and stitch i of the full table
ids = [0] if alone else pd.read_csv(inp.deployed)["stitch_id"].tolist()
metrics = evaluate(model, tokenizer, ids, test, p.tokenizer, p.eval)
shown = ev.samples(model, tokenizer, test[: p.eval["n_samples"]], ids, p.eval["max_new_tokens"])
if alone:
    metrics["stitch_id"] = shown["stitch_id"] = int(w.i)
cols = ["stitch_id", "name", "front", "end", "params", "macs"]
metrics = stitches[cols].merge(metrics, on="stitch_id", validate="one_to_one")
metrics["seed"] = int(w.seed)
log.info("\n%s", metrics[["stitch_id", "params", "nll", "em"]].to_string(index=False))
runtime.write_csv(metrics, out.metrics)
runtime.write_csv(shown, out.samples)
