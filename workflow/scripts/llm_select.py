"""ESTA's one-stage deployment for Stitched LLaMA: per interval of stitch *parameters*, the stitch of
highest training-time importance among those visited at least `min_visits` times; anchors always."""

import pandas as pd

from esta import runtime
from esta.pareto import select_deployed

log = runtime.start_job(snakemake)
d = snakemake.params.deploy
stitches = pd.read_csv(snakemake.input.stitches)
stats = pd.read_csv(snakemake.input.stats).set_index("stitch_id").loc[stitches["stitch_id"]]
deployed = select_deployed(stitches, stats["importance"].to_numpy(), d["intervals"],
                           eligible=stats["visits"].to_numpy() >= d["min_visits"], cost="params")
deployed["visits"] = stats.loc[deployed["stitch_id"], "visits"].to_numpy()
log.info("deployed %d stitches: %s", len(deployed), deployed["stitch_id"].tolist())
runtime.write_csv(deployed, snakemake.output[0])
