"""What each method costs, per step (spec §7, §9): ESTA `train` (LS init + PST training) and
`deploy` (selection from importance); SN-Net `adapt` (full fine-tuning of each anchor), `stitch`
(LS init + training of the stitched anchors) and `deploy` (evaluate every stitch, pick the best).

Per step: jobs, wall time (sum over tasks and seeds, and per task and seed), peak memory (the largest
peak RSS a job of the step logged), trainable parameters (mean over tasks), and the parameters a user keeps
after the step (mean over tasks): adapted anchors, the trained model, or what deploying the chosen
stitches needs (``esta.analysis.stored_params``: task-specific, and with the pretrained weights).
Optimizer steps per step are summed over tasks and seeds (`steps`) and given per task and seed.
`esta_three` is three-stage ESTA (the stages ablation, on the ablation tasks only): `adapt` (PST on
each anchor alone), `train` (LS init on the adapted anchors + PST over every stitch), `deploy`.
A `total` row per method sums the wall time and steps and takes the peak memory and parameters maxima.

Column `metric` names what the runs behind a row are judged by: `accuracy` (classification, every
row above) or `miou` (the dense tasks, spec §14, when `dense.enabled`: the same steps from the dense
rules' benchmarks, esta.vit.seg_tables.cost_rows)."""

import json
from pathlib import Path

import pandas as pd

from esta import runtime
from esta.analysis import stored_params
from esta.vit.info import meta_stitched
from esta.vit.anchors import family_at
from esta.vit.build import tuning_config
from esta.vit.seg_tables import cost_rows
from esta.tunable import count_trainable

log = runtime.start_job(snakemake)
p = snakemake.params
bench = pd.read_csv(snakemake.input.benchmarks)
deployed = pd.read_csv(snakemake.input.deployed)
deployed = deployed[deployed["variant"] == "default"]
fam = family_at(p.family, p.img_size)
classes_of = {m["task"]: m["num_classes"] for m in (json.loads(Path(f).read_text()) for f in snakemake.input.data)}

# (method, step) -> benchmark rules and the prefix their job names start with (default variant)
STEPS = {
    ("esta", "train"): [("ls_init", "esta/default/"), ("train_esta", "default/")],
    ("esta", "deploy"): [("select_esta", "default/")],
    ("snnet", "adapt"): [("snnet_adapt", "default/")],
    ("snnet", "stitch"): [("ls_init", "snnet/default/"), ("snnet_stitch", "default/")],
    ("snnet", "deploy"): [("evaluate_stitches", "snnet/default/"), ("snnet_deploy", "default/")],
}

counts = []  # per method, task, seed: trainable and stored parameters after each step
for (method, task, seed), d in deployed.groupby(["method", "task", "seed"]):
    classes = classes_of[task]
    m = meta_stitched(fam, classes, tuning_config(method, p.method[method]))
    net = m.net
    trained = count_trainable(m)
    stored = stored_params(m, d["stitch_id"].tolist())
    anchors = sum(p_.numel() for a in net.anchors for p_ in a.parameters())
    row = dict(method=method, task=task, seed=seed)
    if method == "esta":
        counts += [dict(row, step="train", trainable_params=trained, stored_params_task=trained,
                        stored_params_total=trained + stored["total"] - stored["task"]),
                   dict(row, step="deploy", trainable_params=0, stored_params_task=stored["task"],
                        stored_params_total=stored["total"])]
    else:
        model_params = sum(p_.numel() for p_ in m.parameters())
        counts += [dict(row, step="adapt", trainable_params=anchors, stored_params_task=anchors,
                        stored_params_total=anchors),
                   dict(row, step="stitch", trainable_params=trained, stored_params_task=model_params,
                        stored_params_total=model_params),
                   dict(row, step="deploy", trainable_params=0, stored_params_task=stored["task"],
                        stored_params_total=stored["total"])]
counts = pd.DataFrame(counts).groupby(["method", "step"], as_index=False)[
    ["trainable_params", "stored_params_task", "stored_params_total"]].mean().round().astype(
    {"trainable_params": int, "stored_params_task": int, "stored_params_total": int})


def read_json(files) -> list[dict]:
    return [json.loads(Path(f).read_text()) for f in files]


# optimizer steps per (method, step), summed over the runs behind the reported accuracies (final
# mode with retrain_final; wall time counts every job, tuning-mode runs included)
per_run = deployed.drop_duplicates(["method", "task", "seed"]).set_index("method")["train_steps"]
steps = {("esta", "train"): per_run.loc[["esta"]].sum(), ("snnet", "stitch"): per_run.loc[["snnet"]].sum(),
         ("snnet", "adapt"): sum(r["steps"] for r in read_json(snakemake.input.adapt_info))}


n_runs = deployed.groupby(["task", "seed"]).ngroups
runs = {"esta": n_runs, "snnet": n_runs}
if p.three:  # three-stage ESTA, from the stages ablation (its benchmark files are not in benchmarks.csv)
    bench = pd.concat([bench, runtime.read_benchmarks(snakemake.input.three_bench)], ignore_index=True)
    variant = next(iter(p.three))
    for step, rules in (("adapt", [("esta_adapt_anchor", f"{variant}/")]),
                        ("train", [("ls_init", f"esta/{variant}/"), ("train_esta", f"{variant}/")]),
                        ("deploy", [("select_esta", f"{variant}/")])):
        STEPS[("esta_three", step)] = rules
    info, adapt = read_json(snakemake.input.three_info), read_json(snakemake.input.three_adapt_info)
    runs["esta_three"] = len({(r["task"], r["seed"]) for r in info})
    steps[("esta_three", "adapt")] = sum(r["steps"] for r in adapt)
    steps[("esta_three", "train")] = sum(r["steps"] for r in info)
    per_anchor = pd.DataFrame(adapt).groupby(["task", "seed"])["trainable_params"].sum().mean()
    trained = sum(r["trainable_params"] for r in info) / len(info)
    three = counts[counts["method"] == "esta"].assign(method="esta_three")
    three.loc[three["step"] == "train", "trainable_params"] = round(trained)
    stage1 = dict(method="esta_three", step="adapt", trainable_params=round(per_anchor),
                  stored_params_task=round(per_anchor), stored_params_total=round(per_anchor))
    counts = pd.concat([counts, three, pd.DataFrame([stage1])], ignore_index=True)

rows = []
for (method, step), rules in STEPS.items():
    jobs = pd.concat([bench[(bench["rule"] == r) & bench["job"].str.startswith(prefix)] for r, prefix in rules])
    if jobs.empty:
        raise ValueError(f"no benchmark rows for {method} {step} ({rules}) in {snakemake.input.benchmarks}")
    n = steps.get((method, step), 0)
    rows.append(dict(method=method, step=step, jobs=len(jobs), steps=n, steps_per_task=n / runs[method],
                     wall_s=jobs["s"].sum(), wall_s_per_task=jobs["s"].sum() / runs[method],
                     peak_rss_mb=jobs["peak_rss_mb"].max()))
table = pd.DataFrame(rows).merge(counts, on=["method", "step"]).assign(metric="accuracy")
if p.dense:  # the dense tasks' rows (metric miou, esta.vit.seg_tables)
    inp = snakemake.input
    dense = cost_rows(runtime.read_benchmarks(inp.dense_bench), inp.dense_info, inp.dense_adapt, inp.dense_deployed,
                      inp.dense_data, p.family, p.dense["img_size"], p.dense["head_hidden"],
                      {m: tuning_config(m, p.method[m]) for m in ("esta", "snnet")})
    table = pd.concat([table, dense.assign(metric="miou")], ignore_index=True)
total = table.groupby(["metric", "method"], as_index=False).agg(
    jobs=("jobs", "sum"), steps=("steps", "sum"), steps_per_task=("steps_per_task", "sum"),
    wall_s=("wall_s", "sum"), wall_s_per_task=("wall_s_per_task", "sum"),
    peak_rss_mb=("peak_rss_mb", "max"), trainable_params=("trainable_params", "max"))
last = table.drop_duplicates(["metric", "method"], keep="last").set_index(["metric", "method"])
key = pd.MultiIndex.from_frame(total[["metric", "method"]])
total = total.assign(step="total", stored_params_task=last.loc[key, "stored_params_task"].to_numpy(),
                     stored_params_total=last.loc[key, "stored_params_total"].to_numpy())
table = pd.concat([table, total[table.columns]], ignore_index=True)
table = table[["metric", *[c for c in table.columns if c != "metric"]]]
table = table.sort_values(["metric", "method", "step"], key=lambda c: c.map(
    {"adapt": 0, "train": 0, "stitch": 1, "deploy": 2, "total": 3}) if c.name == "step" else c)
log.info("\n%s", table.to_string(index=False))
runtime.write_csv(table.round(3), snakemake.output[0])
