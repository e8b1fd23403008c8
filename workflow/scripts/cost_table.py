"""What each method costs, per step (spec §7, §9): ESTA `train` (LS init + PST training) and
`deploy` (selection from importance); SN-Net `adapt` (full fine-tuning of each anchor), `stitch`
(LS init + training of the stitched anchors) and `deploy` (evaluate every stitch, pick the best).

Per step: jobs, wall time (sum over tasks and seeds, and per task and seed), peak memory (max RSS
over the step's jobs), trainable parameters (mean over tasks), and the parameters a user keeps
after the step (mean over tasks): adapted anchors, the trained model, or what deploying the chosen
stitches needs (``esta.analysis.stored_params``: task-specific, and with the pretrained weights).
A `total` row per method sums the wall time and takes the peak memory and parameters maxima."""

import pandas as pd

from esta import runtime
from esta.analysis import stored_params
from esta.info import meta_stitched
from esta.vit.anchors import family_at
from esta.vit.build import tuning_config
from esta.vit.data import task_info
from esta.vit.tuning import count_trainable

log = runtime.start_job(snakemake)
p = snakemake.params
bench = pd.read_csv(snakemake.input.benchmarks)
deployed = pd.read_csv(snakemake.input.deployed)
deployed = deployed[deployed["variant"] == "default"]
fam = family_at(p.family, p.img_size)

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
    classes = task_info(task).num_classes
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

runs = deployed.groupby(["task", "seed"]).ngroups
rows = []
for (method, step), rules in STEPS.items():
    jobs = pd.concat([bench[(bench["rule"] == r) & bench["job"].str.startswith(prefix)] for r, prefix in rules])
    if jobs.empty:
        raise ValueError(f"no benchmark rows for {method} {step} ({rules}) in {snakemake.input.benchmarks}")
    rows.append(dict(method=method, step=step, jobs=len(jobs), wall_s=jobs["s"].sum(),
                     wall_s_per_task=jobs["s"].sum() / runs, peak_rss_mb=jobs["max_rss"].max()))
table = pd.DataFrame(rows).merge(counts, on=["method", "step"])
total = table.groupby("method", as_index=False).agg(
    jobs=("jobs", "sum"), wall_s=("wall_s", "sum"), wall_s_per_task=("wall_s_per_task", "sum"),
    peak_rss_mb=("peak_rss_mb", "max"), trainable_params=("trainable_params", "max"))
last = table.drop_duplicates("method", keep="last").set_index("method")
total = total.assign(step="total", stored_params_task=total["method"].map(last["stored_params_task"]),
                     stored_params_total=total["method"].map(last["stored_params_total"]))
table = pd.concat([table, total[table.columns]], ignore_index=True)
table = table.sort_values(["method", "step"], key=lambda c: c.map(
    {"adapt": 0, "train": 0, "stitch": 1, "deploy": 2, "total": 3}) if c.name == "step" else c)
log.info("\n%s", table.to_string(index=False))
runtime.write_csv(table.round(3), snakemake.output[0])
