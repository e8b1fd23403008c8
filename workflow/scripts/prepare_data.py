"""Render one embedded task in the VTAB-1k layout and describe it in a manifest."""

from esta import runtime
from esta.vit.build import write_manifest
from esta.vit.data import task_info
from esta.vit.embedded import make_task

log = runtime.start_job(snakemake)
task, d = snakemake.wildcards.task, snakemake.params.data
info = task_info(task)
out = snakemake.params.folder  # the manifest sits in the task folder it describes
make_task(info.name, out, seed=d["seed"], n_train=d["n_train"], n_val=d["n_val"], n_test=d["n_test"])
m = write_manifest(snakemake.output[0], out, task, info.num_classes)
log.info("wrote %s: %s", out, m["splits"])
