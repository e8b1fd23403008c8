"""ESTA's one-stage deployment: per FLOPs interval, the stitch of highest training-time importance
among those visited at least `min_visits` times; anchors always (spec §6). No evaluation pass.
With `refresh`, importance is first recomputed for every stitch on one fixed training batch."""

import pandas as pd

from esta import runtime
from esta.pareto import select_deployed

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
stitches = pd.read_csv(inp.stitches)
stats = pd.read_csv(inp.stats).set_index("stitch_id").loc[stitches["stitch_id"]]
d = p.deploy
score = stats["importance"].to_numpy()
if p.refresh:  # only then a model: the plain selection is a table job and starts without torch
    from esta.sampling import refresh_importance
    from esta.vit.anchors import family_at
    from esta.vit.build import assemble, fixed_batch, open_task, read_manifest, tuning_config
    from esta.vit.data import mode_splits

    manifest = read_manifest(inp.data)
    model = assemble(family_at(p.family, p.img_size), manifest["num_classes"], inp.anchors, inp.stitch,
                     tuning_config("esta", p.method), state_file=inp.model, task=manifest["task"])
    data = open_task(manifest, mode_splits(manifest["task"], "tuning")[0], p.img_size, augment=False,
                     normalize=p.normalize, family=p.family, fgvc_interpolation=p.fgvc_interpolation, lazy=True)
    x, y = fixed_batch(data, p.method["train"]["batch_size"], int(snakemake.wildcards.seed))
    score = refresh_importance(model, (x, y))
    log.info("importance refreshed on a fixed batch of %d training images", len(y))
deployed = select_deployed(stitches, score, d["intervals"], eligible=stats["visits"].to_numpy() >= d["min_visits"])
deployed["visits"] = stats.loc[deployed["stitch_id"], "visits"].to_numpy()
deployed["importance_refresh"] = p.refresh
log.info("deployed %d stitches: %s", len(deployed), deployed["stitch_id"].tolist())
runtime.write_csv(deployed, snakemake.output[0])
