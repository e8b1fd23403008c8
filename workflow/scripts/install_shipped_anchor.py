"""Install one anchor shipped in the package (esta/vit/assets/<family>/) as the run's anchor, after
checking it against the folder's manifest (anchors.source: shipped)."""

from esta import runtime
from esta.vit.shipped import install

log = runtime.start_job(snakemake)
out = snakemake.output
entry = install(snakemake.params.folder, int(snakemake.wildcards.i), out.weights, out.info)
log.info("installed %s (%s, upstream val accuracy %.4f) from %s", entry["file"], entry["anchor"],
         entry["upstream_val_accuracy"], snakemake.params.folder)
