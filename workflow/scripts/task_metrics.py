"""One tidy table per method, variant and task: every deployed stitch of every seed, with the costs
of this task's head and the metadata of the run that produced each accuracy (esta.vit.metrics)."""

import json

import pandas as pd

from esta import runtime
from esta.vit.metrics import deployed_metrics

runtime.start_job(snakemake)
w, p, inp = snakemake.wildcards, snakemake.params, snakemake.input
stitches = pd.read_csv(inp.stitches)
classes = json.loads(open(inp.data).read())["num_classes"]  # custom tasks: known from their data only
frames = []
for seed, acc_file, tuning_file, eval_file in zip(p.seeds, inp.accuracy, inp.train, inp.eval_train):
    runs = [json.loads(open(f).read()) for f in (tuning_file, eval_file)]
    df = deployed_metrics(pd.read_csv(acc_file), stitches, classes, *runs, retrain_final=p.retrain_final)
    frames.append(df.assign(method=w.method, variant=w.variant, task=w.task, group=p.group, seed=seed))
lead = ["method", "variant", "task", "group", "seed", "stitch_id", "name", "interval", "reason", "gmacs", "test_accuracy"]
out = pd.concat(frames, ignore_index=True)
runtime.write_csv(out[lead + [c for c in out.columns if c not in lead]], snakemake.output[0])
