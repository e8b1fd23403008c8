"""Evaluate Stitched LLaMA on the held-out adaptation records: every deployed ESTA stitch
(llm_evaluate), every stitch of the run (llm_evaluate_stitches: what the score table judges each score
and the oracle by, the same set for every score) or one individually adapted anchor
(llm_evaluate_anchor): masked NLL, perplexity and greedy exact match per stitch, plus the evaluated
stitches' answers to a fixed prompt set (not for llm_evaluate_stitches)."""

import json
from pathlib import Path

import pandas as pd

from esta import runtime
from esta.llm import evaluate as ev
from esta.llm.build import assemble, evaluate, load_tokenizer, stitched
from esta.llm.data import load_alpaca
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
alone = snakemake.rule == "llm_evaluate_anchor"
every = snakemake.rule == "llm_evaluate_stitches"
net, _ = stitched(p.folders, p.dtype, stitch_init=None if alone else inp.stitch,
                  anchors=[int(w.i)] if alone else None, rule=p.stitch_rule)
model = assemble(net, p.pst, inp.model).to(pick_device(p.device))
tokenizer = load_tokenizer(inp.tokenizer)
test = load_alpaca(inp.test)
stitches = pd.read_csv(inp.stitches)
# an anchor alone is stitch 0 of its one-anchor model and stitch i of the full table
if alone:
    ids = [0]
else:
    ids = stitches["stitch_id"].tolist() if every else pd.read_csv(inp.deployed)["stitch_id"].tolist()
metrics = evaluate(model, tokenizer, ids, test, p.tokenizer, p.eval, mc_items=json.loads(Path(inp.mc).read_text()))
if alone:
    metrics["stitch_id"] = int(w.i)
cols = ["stitch_id", "name", "front", "end", "params", "macs", "macs_unit"]
metrics = stitches[cols].merge(metrics, on="stitch_id", validate="one_to_one")
# the precision the numbers were computed in (spec §11): anchors in llm.dtype, trainables fp32
trainable_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in model.trainable().values()})
metrics = metrics.assign(seed=int(w.seed), dtype=p.dtype, trainable_dtype="/".join(trainable_dtypes))
log.info("\n%s", metrics[["stitch_id", "params", "nll", "em", "mc_acc"]].to_string(index=False))
runtime.write_csv(metrics, out.metrics)
if not every:
    shown = ev.samples(model, tokenizer, test[: p.eval["n_samples"]], ids, p.eval["max_new_tokens"])
    if alone:
        shown["stitch_id"] = int(w.i)
    runtime.write_csv(shown, out.samples)
