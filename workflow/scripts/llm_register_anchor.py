"""Register one user-provided LLaMA anchor folder (llm.anchors.folders): load it locally, record its
size and its NLL on the held-out adaptation records (the anchor check compares them)."""

from esta import runtime
from esta.llm.anchors import load_anchors
from esta.llm.build import DTYPES, evaluate, require
from esta.llm.data import load_alpaca
from esta.llm.stitch import StitchedLlama
from esta.train import pick_device

log = runtime.start_job(snakemake)
w, p, inp, out = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
i = int(w.i)
folder = require(p.folder, f"llm.anchors.folders[{i}]", "a Hugging Face model folder (config.json, weights)")
(lm,), tokenizer = load_anchors([folder], DTYPES[p.dtype])
device = pick_device(p.device)
net = StitchedLlama([lm]).to(device)
# NLL only: exact match of a base model on free-form Alpaca answers says little
metrics = evaluate(net, tokenizer, [0], load_alpaca(inp.test), p.tokenizer, dict(p.eval, n_em=0)).iloc[0]
log.info("%s: held-out NLL %.4f", folder, metrics["nll"])
runtime.write_json(out.info, dict(name=folder.name, anchor=i, folder=str(folder), params=sum(t.numel() for t in lm.parameters()),
                                  check_metric="nll", higher_is_better=False, value=float(metrics["nll"]),
                                  metrics=metrics.to_dict(), config_digest=runtime.file_digest(folder / "config.json"),
                                  provenance=runtime.provenance(device)))
