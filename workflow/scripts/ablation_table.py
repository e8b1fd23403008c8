"""One ablation of ESTA (spec §9) as deployed-stitch curves, averaged over the ablation tasks, with
what each variant costs: `bias`, `sampling`, `rank`, `peft` (LoRA, DoRA, IA³, Adapter, AdaptFormer)
and `stages` (one- vs three-stage PST) compare variants (each trained by the same rules); `selection` compares
the deployments of the default model by each score (esta.scores: importance as training left it and
refreshed on one fixed batch, loss, loss on a fixed batch, selection-split evaluation) and the oracle's
(deploy by test accuracy), on every task."""

import json

import pandas as pd

from esta import runtime
from esta.analysis import selection_ablation
from esta.pareto import deployed_curves

log = runtime.start_job(snakemake)
name = snakemake.wildcards.name
inp, p = snakemake.input, snakemake.params


PEFT_LABELS = {"lora": "LoRA", "dora": "DoRA", "ia3": "IA³", "adapter": "Adapter", "adaptformer": "AdaptFormer"}


def label(variant: str) -> str:
    cfg = p.variants[variant]
    if name == "bias":
        return "stitch-specific biases" if cfg["stitch_biases"] else "shared biases"
    if name == "sampling":
        return f"{cfg['sampler']['kind']} sampling"
    if name == "peft":
        return PEFT_LABELS[cfg["peft"]["method"]]
    if name == "stages":  # the epochs tell the compute-matched control (more steps) apart
        per_stage = " per stage" if cfg["stages"] == "three" else ""
        return f"{cfg['stages']}-stage ({cfg['train']['epochs']} epochs{per_stage})"
    return f"r = {cfg['lora']['rank']}"


if name == "selection":
    stitches = pd.read_csv(inp.stitches)
    labels = {"importance": "importance", "refreshed": "importance, refreshed", "loss": "loss",
              "loss_batch": "loss on a fixed batch", "evaluate": "evaluate (selection split)"}
    frames = []
    for i, ((task, seed), test, train) in enumerate(zip(p.runs, inp.test, inp.train)):
        files = inp.deployed[i * len(p.selections) : (i + 1) * len(p.selections)]
        deployments = {labels[h]: pd.read_csv(f) for h, f in zip(p.selections, files)}
        d = selection_ablation(stitches, deployments, pd.read_csv(test), p.intervals)
        trainable = json.loads(open(train).read())["trainable_params"]
        frames.append(d.assign(task=task, seed=seed, method="esta", trainable_params=trainable))
    deployed = pd.concat(frames, ignore_index=True).rename(columns={"selection": "label"})
    deployed["variant"] = "default"
else:
    deployed = pd.concat([pd.read_csv(f) for f in inp.metrics], ignore_index=True)
    deployed["label"] = deployed["variant"].map(label)

curves = deployed_curves(deployed, by=["label"])
per_run = deployed.groupby(["label", "task", "seed"], as_index=False).agg(
    test_accuracy=("test_accuracy", "mean"),
    **{c: (c, "first") for c in ("train_wall_s", "adapt_wall_s", "train_steps", "adapt_steps", "train_peak_rss_mb")
       if c in deployed})
# what each variant costs beside its trainable parameters (in the curves): training time (with a three-stage run's stage 1)
# and steps per task, and the training job's peak memory, each a mean over tasks and seeds
if "train_wall_s" in per_run:  # not in the selection ablation (one trained model)
    per_run["train_wall_s"] += per_run["adapt_wall_s"]
    per_run["train_steps"] += per_run["adapt_steps"]
per_run = per_run.rename(columns={"test_accuracy": "mean_accuracy"})
costs = per_run.groupby("label", sort=False)[
    [c for c in ("mean_accuracy", "train_wall_s", "train_steps", "train_peak_rss_mb") if c in per_run]].mean()
table = curves.merge(costs.reset_index(), on="label").assign(ablation=name)
order = list(dict.fromkeys(deployed["label"]))
table = table.sort_values(["label", "anchor", "gmacs"], key=lambda c: c.map(order.index) if c.name == "label" else c)
lead = ["ablation", "label", "interval", "gmacs", "accuracy", "accuracy_std", "anchor", "mean_accuracy"]
runtime.write_csv(table[lead + [c for c in table.columns if c not in lead]], snakemake.output[0])
log.info("%s: per variant\n%s", name, costs.round(4).to_string())
