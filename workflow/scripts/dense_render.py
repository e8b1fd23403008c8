"""Render the embedded dense task in ADE20K's layout (esta.vit.seg_data, spec §14)."""

from esta import runtime
from esta.vit.seg_data import write_dense_task

log = runtime.start_job(snakemake)
r = snakemake.params.render
counts = write_dense_task(snakemake.output[0], r["n_train"], r["n_val"], r["size"], r["seed"])
log.info("rendered %s at %d px: %s", snakemake.wildcards.task, r["size"], counts)
