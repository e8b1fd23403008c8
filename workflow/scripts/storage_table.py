"""results/tables/storage.csv (spec §12, the paper's storage claim): per method, the bytes of one task's
palette, of its standalone exports and of the shared anchors: measured on this run's files, and counted
on the meta device for ViT-Ti/S/B at the paper's shape (fp32, no weights)."""

import pandas as pd

from esta import runtime
from esta.palette import storage_row
from esta.vit.palette import paper_storage

log = runtime.start_job(snakemake)
inp, p = snakemake.input, snakemake.params
rows = []
for tags, palette, exports in zip(p.runs, inp.palettes, inp.exports, strict=True):
    anchors = p.llm_anchors if tags["family"] == "llm" else inp.anchors if tags["method"] == "esta" else []
    rows.append(dict(scope="run", **tags, **storage_row(palette, exports, anchors)))
paper = paper_storage(**p.paper).assign(scope="paper shape, meta device, fp32",
                                        task=f"{p.paper['num_classes']} classes")
table = pd.concat([pd.DataFrame(rows), paper], ignore_index=True).astype({"seed": "Int64", "n_exports": "Int64"})
log.info("\n%s", table[["scope", "family", "method", "palette_params", "palette_bytes", "anchors_bytes"]].to_string())
runtime.write_csv(table, snakemake.output[0])
