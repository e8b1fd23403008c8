"""Install one tiny LLaMA anchor shipped in the package (esta/llm/assets/<family>/, pretrained at
length by config/upstream.yaml) as the run's anchor folder, checked against the manifest
(llm.anchors.source: shipped)."""

from pathlib import Path

from esta import runtime
from esta.llm.shipped import install

log = runtime.start_job(snakemake)
out = snakemake.output
folder = Path(snakemake.input.manifest).parent  # the shipped family's folder
entry = install(folder, int(snakemake.wildcards.i), out.folder, out.info)
log.info("installed %s (%s, %d steps, tasks-A exact match %.3f) from %s", entry["files"][0]["file"], entry["name"],
         entry["steps"], entry["tasks_a_em"], folder)
