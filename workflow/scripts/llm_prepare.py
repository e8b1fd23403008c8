"""The language data of Stitched LLaMA (spec §11 "Data"): the procedural suite (tasks A for the
anchors, tasks B for adaptation) or a split of the user's Alpaca JSON, and the tokenizer: trained
on the suite for pretrained tiny anchors, the shipped one for shipped anchors (the tokenizer they
were trained with), the anchors' own for folders. Every split is encoded once
here, so truncation and padding problems fail before any training."""

import os
import shutil
from pathlib import Path

from esta import runtime
from esta.llm import tasks
from esta.llm.build import encode, load_tokenizer, require, split_alpaca, suite
from esta.llm.shipped import read_shipped

log = runtime.start_job(snakemake)
p, out = snakemake.params, snakemake.output
data = suite(p.suite)
if p.alpaca_json is not None:
    path = require(p.alpaca_json, "llm.alpaca_json", "an Alpaca JSON file (a list of instruction/input/output)")
    data["train"], data["test"] = split_alpaca(path, p.suite["n_test"], p.suite["seed"])
if p.anchors["source"] == "folders":
    first = require((p.anchors["folders"] or [None])[0], "llm.anchors.folders[0]", "a Hugging Face model folder")
    tokenizer = load_tokenizer(first)  # the anchors share it (checked when they are loaded)
elif p.anchors["source"] == "shipped":
    shipped = Path(snakemake.input.shipped).parent  # the shipped family's folder (its manifest is the input)
    read_shipped(shipped)  # every shipped file against the manifest
    tokenizer = load_tokenizer(shipped)  # the one the shipped anchors were trained with
else:
    tokenizer = tasks.train_tokenizer(data["pretrain_train"] + data["train"], p.tokenizer["vocab_size"])
reports = {}
for name, records in data.items():
    tasks.write_alpaca(records, out[name])
    reports[name] = encode(records, tokenizer, p.tokenizer, out[name])[1].to_dict()
    log.info("%s: %d records, %d truncated", name, len(records), reports[name]["truncated"])
# held-out records as log-likelihood multiple-choice items (mc_acc; the lm-eval task esta_llm_mc)
items = tasks.choice_items(data["test"][: p.mc["n_mc"]], p.mc["mc_choices"], p.suite["seed"])
runtime.write_json(out.mc, items)
tmp = f"{out.tokenizer}.tmp-{os.getpid()}"
tokenizer.save_pretrained(tmp)
shutil.rmtree(out.tokenizer, ignore_errors=True)
os.replace(tmp, out.tokenizer)
runtime.write_json(out.info, dict(vocab_size=len(tokenizer), source=p.anchors["source"], alpaca_json=p.alpaca_json,
                                  encoding=reports, provenance=runtime.provenance()))
