"""Every stitch of the LLM anchors with its parameters and per-token MACs (meta device)."""

import json

from esta import runtime
from esta.llm.build import cost_table

log = runtime.start_job(snakemake)
names = [json.loads(open(f).read())["name"] for f in snakemake.input.infos]
table = cost_table(snakemake.params.folders, names, rule=snakemake.params.stitch_rule)
log.info("%d stitches, %.3g to %.3g params", len(table), table["params"].min(), table["params"].max())
runtime.write_csv(table, snakemake.output[0])
