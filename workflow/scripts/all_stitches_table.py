"""The whole palette of one task on view (spec §6, §9): the test accuracy of every stitch of both
methods (not only the deployed ones), mean ± std over seeds, the share of seeds that deployed each,
and each method's Pareto front."""

import pandas as pd

from esta import runtime
from esta.pareto import palette_view

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
rows = []
for (method, seed), test, deployed in zip(p.runs, inp.test, inp.deployed):
    chosen = set(pd.read_csv(deployed)["stitch_id"])
    t = pd.read_csv(test)
    rows.append(t.assign(method=method, seed=seed, deployed=t["stitch_id"].isin(chosen)))
table = palette_view(pd.concat(rows, ignore_index=True), pd.read_csv(inp.stitches)).assign(task=p.task)
for m, g in table.groupby("method"):
    off = g[(g["deployed_share"] == 0) & g["front_member"]]
    log.info("%s: %d stitches on the front, %d of them never deployed: %s", m, g["front_member"].sum(), len(off),
             off["stitch_id"].tolist())
runtime.write_csv(table, snakemake.output[0])
