"""Check one external task whole, before any training, and describe it in a manifest: a task of the
table under `data_root` (split sizes, bytes + sha256 of its list files, spec §8), a user's data set
`custom/<name>` from config `datasets` (classes, split sizes, skipped files, bytes + sha256, spec §13),
or a dense task `dense/<name>` in ADE20K's layout (classes, split sizes, pixels per class, spec §14)."""

from esta import runtime
from esta.vit.tasks import task_kind

log = runtime.start_job(snakemake)
task, p = snakemake.wildcards.task, snakemake.params
if task_kind(task) == "seg":  # esta.vit.seg_jobs: rendered (input folder) or under data_root
    from esta.vit.seg_jobs import register

    register(task, snakemake.output[0], snakemake.input.get("folder") or None, p.data_root, log)
else:
    from esta.vit.build import register_task

    m = register_task(snakemake.output[0], task, p.data_root, p.dataset)
    log.info("registered %s at %s: %s", task, m["root"], m["splits"])
