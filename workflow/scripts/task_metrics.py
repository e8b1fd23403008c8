"""One tidy table per method, variant and task: every deployed stitch of every seed."""

import json

import pandas as pd

from esta import runtime
from esta.vit.data import task_info

runtime.start_job(snakemake)
w, p = snakemake.wildcards, snakemake.params
stitches = pd.read_csv(snakemake.input.stitches).set_index("stitch_id")
info = task_info(w.task)
frames = []
for seed, acc_file, train_file in zip(p.seeds, snakemake.input.accuracy, snakemake.input.train):
    df = pd.read_csv(acc_file)
    train = json.loads(open(train_file).read())
    cols = ["name", "front", "end", "j", "k", "depth", "gmacs", "params"]
    df = df.join(stitches[cols], on="stitch_id")
    df = df.assign(method=w.method, variant=w.variant, task=w.task, group=info.group, seed=seed,
                   trainable_params=train["trainable_params"], train_wall_s=train["wall_s"],
                   retrain_final=p.retrain_final, torch=train["provenance"]["torch"])
    frames.append(df)
lead = ["method", "variant", "task", "group", "seed", "stitch_id", "name", "interval", "reason", "gmacs", "test_accuracy"]
out = pd.concat(frames, ignore_index=True)
runtime.write_csv(out[lead + [c for c in out.columns if c not in lead]], snakemake.output[0])
