"""The dense experiment's tables (esta.vit.seg_results): deployed stitches of both methods over seeds
(the CSV twin of pareto_dense), every stitch per task (the all-stitch figure's twin) and the summary
(trainable parameters, training cost, mean deployed mIoU, rho(GMACs, mIoU), each anchor alone).
SN-Net's training cost includes its adapt step (the anchors fine-tuned alone). Tasks by name (shapes)."""

import json
from pathlib import Path

import pandas as pd

from esta import runtime
from esta.vit.seg_results import pareto_dense, stitch_table, summary
from esta.vit.seg_tables import run_of
from esta.vit.tasks import dense_name

runtime.start_job(snakemake)
inp, out = snakemake.input, snakemake.output


def run_key(path: str) -> dict:
    """method, task name and seed of a file of a dense run (esta.vit.seg_tables.run_of)."""
    r = run_of(path)
    return dict(r, task=dense_name(r["task"]))


adapt = pd.DataFrame([dict(run_key(f), **{k: v for k, v in json.loads(Path(f).read_text()).items()
                                          if k in ("anchor", "test_miou", "wall_s", "trainable_params", "steps")})
                      for f in inp.adapt])
runs = []
for f in inp.info:
    info, key = json.loads(Path(f).read_text()), run_key(f)
    extra = adapt[(adapt.task == key["task"]) & (adapt.seed == key["seed"])] if key["method"] == "snnet" else adapt[:0]
    runs.append(dict(key, trainable_params=info["trainable_params"], steps=info["steps"] + extra["steps"].sum(),
                     wall_s=info["wall_s"] + extra["wall_s"].sum()))
runs = pd.DataFrame(runs)
deployed = pd.concat([pd.read_csv(f).assign(**run_key(f)) for f in inp.deployed], ignore_index=True)
deployed = deployed.merge(runs[["task", "method", "seed", "trainable_params"]], on=["task", "method", "seed"])
runtime.write_csv(pareto_dense(deployed), out.pareto)
runtime.write_csv(summary(deployed, runs, adapt.drop(columns="method")), out.summary)
stitches = pd.concat([stitch_table(pd.read_csv(s), pd.read_csv(t)).assign(**run_key(t))
                      for s, t in zip(inp.selection, inp.test)], ignore_index=True)
cols = ["task", "method", "stitch_id", "front", "end", "j", "k", "gmacs"]
every = stitches.groupby(cols, as_index=False).agg(miou=("test_miou", "mean"), miou_std=("test_miou", "std"),
                                                   selection_miou=("selection_miou", "mean"))
for task, path in zip(snakemake.params.tasks, out.all_stitches):
    runtime.write_csv(every[every.task == task], path)
