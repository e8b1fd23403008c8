"""Every figure of the workflow, in one style (spec §9-§10): FLOPs on x, top-1 on y, anchors as
stars, mean ± std over seeds as error bars. Plots only: the numbers come from the figure's CSV
twin; which figure is drawn follows from the output's name."""

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from esta import runtime  # noqa: E402

runtime.start_job(snakemake)
LABEL = {"esta": "ESTA", "snnet": "SN-Net"}
COLOR = {"esta": "C3", "snnet": "C0"}
sns.set_theme(style="whitegrid", context="paper")
df = pd.read_csv(snakemake.input.table)
name = Path(snakemake.output.pdf).stem
if df.empty:
    raise ValueError(f"{snakemake.input.table} is empty: nothing to plot for {name}")


def curves(ax, df, key, label_of, colors=None):
    """Deployed-stitch curves with error bars and anchor stars, one per value of ``key``."""
    for i, (value, g) in enumerate(df.groupby(key, sort=False)):
        color = (colors or {}).get(value, f"C{i}")
        line = g[~g["anchor"]].sort_values("gmacs")
        ax.errorbar(line["gmacs"], 100 * line["accuracy"], yerr=100 * line["accuracy_std"], marker="o", ms=4,
                    lw=1.5, capsize=2, color=color, label=label_of(value, g))
        a = g[g["anchor"]]
        ax.scatter(a["gmacs"], 100 * a["accuracy"], marker="*", s=160, color=color, edgecolor="black",
                   linewidths=0.6, zorder=5)
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="anchors")
    ax.set_xlabel("FLOPs (GMACs)")
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.legend(loc="lower right", fontsize=7)


if name.startswith("pareto_"):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    curves(ax, df, "method", lambda m, g: f"{LABEL.get(m, m)} ({g['trainable_params'].iloc[0] / 1e6:.2f} M trainable)",
           COLOR)
    ax.set_title("Mean over tasks" if name == "pareto_all" else df["task"].iloc[0])
elif name.startswith("ablation_"):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    curves(ax, df, "label", lambda v, g: f"{v}: mean {100 * g['mean_accuracy'].iloc[0]:.1f} %")
    ax.set_title(f"Ablation: {name.removeprefix('ablation_')} ({df['n_tasks'].max()} tasks, ESTA)")
elif name == "importance_vs_accuracy":
    tasks = list(dict.fromkeys(df["task"]))
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.4 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        g = df[df["task"] == task]
        sns.scatterplot(data=g, x="importance", y=100 * g["selection_accuracy"], hue="anchor", style="seed",
                        palette={True: "C1", False: "C0"}, ax=ax, s=25, legend=ax is axes.flat[0])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlap
        ax.set_title(f"{task}: Spearman ρ = {g['spearman'].mean():.2f}")
        ax.set_xlabel("final importance $I_s$")
        ax.set_ylabel("selection accuracy (%)")
    for ax in axes.flat[len(tasks):]:
        ax.set_visible(False)
elif name == "grad_interference":
    fig, ax = plt.subplots(figsize=(5.5, 4))
    d = df.assign(progress=(100 * df["frac"]).round().astype(int).astype(str) + " %",
                  biases=df["stitch_biases"].map({True: "stitch-specific biases", False: "shared biases"}))
    sns.boxplot(data=d, x="progress", y="cosine", hue="biases", ax=ax, fliersize=1.5)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training progress")
    ax.set_ylabel("cosine of shared-LoRA gradients")
    ax.set_title(f"Gradient interference between stitches ({d['task'].nunique()} tasks)")
else:
    raise ValueError(f"no plot is defined for {name!r}")

fig.tight_layout()
for out in snakemake.output:
    tmp = runtime.atomic_path(out)
    fig.savefig(tmp, format=out.rsplit(".", 1)[1], dpi=150)
    tmp.replace(out)
