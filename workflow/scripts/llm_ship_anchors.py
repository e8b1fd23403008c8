"""Store the pretrained tiny LLaMA pair in the package (esta/llm/assets/<family>/) with a manifest:
run with config/upstream.yaml (its `llm:` recipe), then commit esta/llm/assets/. Each anchor's tasks-A
exact match is measured again on the stored (bfloat16-rounded) weights: that is what a run on shipped
anchors gets."""

import json
import shutil
import tempfile
from pathlib import Path

from esta import runtime
from esta.llm.build import evaluate, load_tokenizer
from esta.llm.data import load_alpaca
from esta.llm.shipped import load_shipped, ship
from esta.llm.stitch import StitchedLlama

log = runtime.start_job(snakemake)
p, inp, out = snakemake.params, snakemake.input, snakemake.output
infos = [json.loads(open(f).read()) for f in inp.infos]
dest = Path(out[0]).parent
tokenizer = load_tokenizer(inp.folders[0])
test = load_alpaca(inp.test)
with tempfile.TemporaryDirectory() as tmp:  # store once, measure the stored weights, store with the numbers
    ship(inp.folders, infos, tmp, p.command, p.recipe, p.family)
    for i, info in enumerate(infos):
        lm, _ = load_shipped(tmp, i)
        m = evaluate(StitchedLlama([lm]), tokenizer, [0], test, p.recipe["tokenizer"], p.eval).iloc[0]
        log.info("%s: tasks-A exact match %.3f (float32 %.3f), NLL %.4f", info["name"], m["em"], info["value"], m["nll"])
        info.update(value_fp32=info["value"], metrics_fp32=info["metrics"], value=float(m["em"]), metrics=m.to_dict())
shutil.rmtree(dest, ignore_errors=True)
manifest = ship(inp.folders, infos, dest, p.command, p.recipe, p.family,
                extra=dict(data=runtime.file_digest(inp.train)))
log.info("shipped %s: %s", dest, [(a["name"], a["tasks_a_em"]) for a in manifest["anchors"]])
