"""One ablation of ESTA (spec §9) as deployed-stitch curves, averaged over the ablation tasks:
`bias`, `sampling`, `rank` compare variants (each trained by the same rules); `selection` compares
three deployments of the default model: by importance as training left it and refreshed on one fixed
batch (both one stage), and by evaluating every stitch on the selection split."""

import json

import pandas as pd

from esta import runtime
from esta.analysis import selection_ablation
from esta.pareto import deployed_curves

log = runtime.start_job(snakemake)
name = snakemake.wildcards.name
inp, p = snakemake.input, snakemake.params


def label(variant: str) -> str:
    cfg = p.variants[variant]
    if name == "bias":
        return "stitch-specific biases" if cfg["stitch_biases"] else "shared biases"
    if name == "sampling":
        return f"{cfg['sampler']['kind']} sampling"
    return f"r = {cfg['lora']['rank']}"


if name == "selection":
    stitches = pd.read_csv(inp.stitches)
    frames = []
    for (task, seed), trained, refreshed, sel, test, train in zip(p.runs, inp.trained, inp.refreshed, inp.selection,
                                                                 inp.test, inp.train):
        deployments = {"importance": pd.read_csv(trained), "importance, refreshed": pd.read_csv(refreshed)}
        d = selection_ablation(stitches, deployments, pd.read_csv(sel), pd.read_csv(test), p.intervals)
        trainable = json.loads(open(train).read())["trainable_params"]
        frames.append(d.assign(task=task, seed=seed, method="esta", trainable_params=trainable))
    deployed = pd.concat(frames, ignore_index=True).rename(columns={"selection": "label"})
    deployed["variant"] = "default"
else:
    deployed = pd.concat([pd.read_csv(f) for f in inp.metrics], ignore_index=True)
    deployed["label"] = deployed["variant"].map(label)

curves = deployed_curves(deployed, by=["label"])
per_task = deployed.groupby(["label", "task", "seed"], as_index=False)["test_accuracy"].mean()
mean = per_task.groupby("label")["test_accuracy"].mean().rename("mean_accuracy")
table = curves.merge(mean, on="label").assign(ablation=name)
order = list(dict.fromkeys(deployed["label"]))
table = table.sort_values(["label", "anchor", "gmacs"], key=lambda c: c.map(order.index) if c.name == "label" else c)
lead = ["ablation", "label", "interval", "gmacs", "accuracy", "accuracy_std", "anchor", "mean_accuracy"]
runtime.write_csv(table[lead + [c for c in table.columns if c not in lead]], snakemake.output[0])
log.info("%s: mean deployed accuracy %s", name, mean.round(4).to_dict())
