"""Render the synthetic upstream set the embedded anchors are pretrained on (ImageNet's role)."""

from esta import runtime
from esta.vit.build import write_manifest
from esta.vit.embedded import make_upstream

log = runtime.start_job(snakemake)
p = snakemake.params.pretrain
out = snakemake.params.folder  # the manifest sits in the folder it describes
make_upstream(out, seed=snakemake.params.seed, n_classes=p["n_classes"], n_per_class=p["n_per_class"],
              n_val_per_class=p["n_val_per_class"])
m = write_manifest(snakemake.output[0], out, "upstream", p["n_classes"])
log.info("wrote %s: %s", out, m["splits"])
