"""Check one external task whole, before any training, and describe it in a manifest: a task of the
table under `data_root` (split sizes, bytes + sha256 of its list files, spec §8) or a user's data set
`custom/<name>` from config `datasets` (classes, split sizes, skipped files, bytes + sha256, spec §13)."""

from esta import runtime
from esta.vit.build import register_task

log = runtime.start_job(snakemake)
task, p = snakemake.wildcards.task, snakemake.params
m = register_task(snakemake.output[0], task, p.data_root, p.dataset)
log.info("registered %s at %s: %s", task, m["root"], m["splits"])
