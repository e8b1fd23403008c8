"""Plot accuracy vs FLOPs of deployed stitches, ESTA vs SN-Net (spec §9). Plots only: the numbers
come from the CSV twins written by pareto_table (mean over tasks, or one task with params.task)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from esta import runtime  # noqa: E402

runtime.start_job(snakemake)
task = snakemake.params.task
LABEL = {"esta": "ESTA", "snnet": "SN-Net"}
COLOR = {"esta": "C3", "snnet": "C0"}
df = pd.read_csv(snakemake.input.table)
if task is not None:
    df = df[df["task"] == task]
    if df.empty:
        raise ValueError(f"no deployed stitches of task {task!r} in {snakemake.input.table}")

sns.set_theme(style="whitegrid", context="paper")
fig, ax = plt.subplots(figsize=(5.5, 4))
for method, g in df.groupby("method"):
    curve = g[~g["anchor"]].sort_values("gmacs")
    params = g["trainable_params"].iloc[0]
    label = f"{LABEL.get(method, method)} ({params / 1e6:.2f} M trainable)"
    ax.errorbar(curve["gmacs"], 100 * curve["accuracy"], yerr=100 * curve["accuracy_std"], marker="o",
                ms=4, lw=1.5, capsize=2, color=COLOR.get(method), label=label)
    anchors = g[g["anchor"]]
    ax.scatter(anchors["gmacs"], 100 * anchors["accuracy"], marker="*", s=160, color=COLOR.get(method),
               edgecolor="black", linewidths=0.6, zorder=5)
ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="anchors")
ax.set_xlabel("FLOPs (GMACs)")
ax.set_ylabel("Top-1 accuracy (%)")
ax.set_title(task or "Mean over tasks")
ax.legend(loc="lower right")
fig.tight_layout()
for out in snakemake.output:
    tmp = runtime.atomic_path(out)
    fig.savefig(tmp, format=out.rsplit(".", 1)[1], dpi=150)
    tmp.replace(out)
