"""Store the freshly pretrained family in the package (esta/vit/assets/<family>/) with its manifest:
sha256 of every file, the command that made them, the recipe and the upstream accuracies."""

from pathlib import Path

from esta import runtime
from esta.vit.shipped import ship

log = runtime.start_job(snakemake)
inp, p = snakemake.input, snakemake.params
m = ship(list(inp.weights), list(inp.info), Path(snakemake.output[0]).parent, p.command, p.recipe, p.family)
for a in m["anchors"]:
    log.info("shipped %s: %s, %d bytes, upstream val accuracy %.4f", a["anchor"], a["file"], a["file_bytes"],
             a["upstream_val_accuracy"])
