"""Render the synthetic upstream set the embedded anchors are pretrained on (ImageNet's role):
the basic recipes of esta.vit.embedded or the rich mix of esta.vit.upstream (anchors.pretrain.upstream)."""

from esta import runtime
from esta.vit.build import write_manifest
from esta.vit.upstream import make_upstream
from esta.vit.upstream import CLASSES, make_rich_upstream

log = runtime.start_job(snakemake)
p = snakemake.params.pretrain
out = snakemake.params.folder  # the manifest sits in the folder it describes
kind = p["upstream"]
if kind == "rich":
    if p["n_classes"] != CLASSES:
        raise ValueError(f"anchors.pretrain.n_classes is {p['n_classes']}, but the rich upstream set has "
                         f"exactly {CLASSES} classes; set n_classes: {CLASSES}")
    make_rich_upstream(out, seed=snakemake.params.seed, n_per_class=p["n_per_class"],
                       n_val_per_class=p["n_val_per_class"])
else:
    make_upstream(out, seed=snakemake.params.seed, n_classes=p["n_classes"], n_per_class=p["n_per_class"],
                  n_val_per_class=p["n_val_per_class"])
m = write_manifest(snakemake.output[0], out, "upstream", p["n_classes"])
log.info("wrote %s upstream set %s: %s", kind, out, m["splits"])
