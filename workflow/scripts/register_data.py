"""Check one external task folder under `data_root` (every split, before any training) and describe
it in a manifest: split sizes, and bytes + sha256 of its list files (spec §8)."""

from pathlib import Path

from esta import runtime
from esta.vit.build import write_manifest
from esta.vit.data import DATA_ROOT_LAYOUT, task_info

log = runtime.start_job(snakemake)
task, root = snakemake.wildcards.task, snakemake.params.data_root
if root is None:
    raise ValueError(f"task {task!r} reads external data, but config key data_root is not set; "
                     f"run with --config data_root=/path/to/data. Expected layout: {DATA_ROOT_LAYOUT}")
task_dir = Path(root).expanduser().resolve() / task_info(task).folder
m = write_manifest(snakemake.output[0], task_dir, task)
log.info("registered %s at %s: %s", task, task_dir, m["splits"])
