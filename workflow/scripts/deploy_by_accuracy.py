"""Deploy, per FLOPs interval, the stitch most accurate on the selection split (SN-Net's `deploy`
step, spec §7); anchors always."""

import pandas as pd

from esta import runtime
from esta.vit.tasks import task_kind
from esta.pareto import deploy_by_score

log = runtime.start_job(snakemake)

w = snakemake.wildcards
if task_kind(w.task) == "seg":  # a dense task (spec §14): the selection mIoU, with the stitches' costs and mIoU
    from esta.vit.seg_jobs import deploy_run

    deploy_run(w, snakemake.params, snakemake.input, snakemake.output, log, "snnet")
else:
    stitches = pd.read_csv(snakemake.input.stitches)
    acc = pd.read_csv(snakemake.input.accuracy).set_index("stitch_id")
    score = acc.loc[stitches["stitch_id"], "selection_accuracy"].to_numpy()
    deployed, _ = deploy_by_score(stitches, "evaluate", score, snakemake.params.deploy["intervals"])
    log.info("deployed %d stitches: %s", len(deployed), deployed["stitch_id"].tolist())
    runtime.write_csv(deployed, snakemake.output[0])
