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
LABEL = {"esta": "ESTA", "snnet": "SN-Net", "anchor_ft": "each anchor fine-tuned alone",
         "scratch": "each anchor trained from scratch"}
COLOR = {"esta": "C3", "snnet": "C0", "anchor_ft": "C2", "scratch": "C7"}
LABEL_ONE = {"scratch": "the largest anchor trained from scratch"}
CONTROLS = ("anchor_ft", "scratch")  # anchors-only reference runs, drawn as dashed lines
sns.set_theme(style="whitegrid", context="paper")
df = pd.read_csv(snakemake.input.table)
name = Path(snakemake.output.pdf).stem
if df.empty:
    raise ValueError(f"{snakemake.input.table} is empty: nothing to plot for {name}")


def plural(n, noun: str) -> str:
    n = int(n)
    return f"{n} {noun}{'' if n == 1 else 's'}"


def curves(ax, df, key, label_of, colors=None):
    """Deployed-stitch curves with error bars and anchor stars, one per value of ``key``."""
    for i, (value, g) in enumerate(df.groupby(key, sort=False)):
        color = (colors or {}).get(value, f"C{i}")
        if value in CONTROLS:
            g = g.sort_values("gmacs")
            # controls.scratch: largest trains one anchor from scratch, a single point
            label = LABEL_ONE.get(value, LABEL[value]) if len(g) == 1 else LABEL[value]
            ax.errorbar(g["gmacs"], 100 * g["accuracy"], yerr=100 * g["accuracy_std"], marker="x", ms=6, lw=1,
                        ls="--", capsize=2, color=color, label=label)
            continue
        line = g[~g["anchor"]].sort_values("gmacs")
        ax.errorbar(line["gmacs"], 100 * line["accuracy"], yerr=100 * line["accuracy_std"], marker="o", ms=4,
                    lw=1.5, capsize=2, color=color, label=label_of(value, g))
        a = g[g["anchor"]]
        ax.scatter(a["gmacs"], 100 * a["accuracy"], marker="*", s=160, color=color, edgecolor="black",
                   linewidths=0.6, zorder=5)
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="anchors")
    ax.set_xlabel("FLOPs (GMACs)")
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.legend(loc="best", fontsize=7)  # not over the data: the scratch point sits low on the right


if name.startswith("pareto_"):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    curves(ax, df, "method", lambda m, g: f"{LABEL.get(m, m)} ({g['trainable_params'].iloc[0] / 1e6:.2f} M trainable)",
           COLOR)
    ax.set_title("Mean over tasks" if name == "pareto_all" else df["task"].iloc[0])
elif name == "llm_pareto":
    # Stitched LLaMA: held-out NLL and exact match against stitch parameters, ESTA's deployed
    # stitches (per variant) vs each anchor adapted alone; anchors as stars.
    llm_label = {"esta": "ESTA (shared LoRA + stitch biases)", "esta_no_biases": "ESTA, shared LoRA only",
                 "anchor_ft": "each anchor adapted alone"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (col, ylabel) in zip(axes, [("nll", "held-out response NLL"), ("em", "exact match (%)")]):
        scale = 100 if col == "em" else 1
        for i, (m, g) in enumerate(df.groupby("method", sort=False)):
            g = g.sort_values("params")
            color = {"esta": "C3", "anchor_ft": "C2"}.get(m, f"C{i + 4}")
            ls = "--" if m == "anchor_ft" else "-"
            ax.errorbar(g["params"] / 1e6, scale * g[col], yerr=scale * g[f"{col}_std"], marker="o", ms=4, lw=1.5,
                        ls=ls, capsize=2, color=color, label=llm_label.get(m, m))
            a = g[g["anchor"]]
            ax.scatter(a["params"] / 1e6, scale * a[col], marker="*", s=160, color=color, edgecolor="black",
                       linewidths=0.6, zorder=5)
        ax.scatter([], [], marker="*", s=120, color="grey", edgecolor="black", label="anchors")
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(ylabel)
    rho = df[df["method"] == "esta"]["spearman_params_em"].iloc[0] if (df["method"] == "esta").any() else float("nan")
    axes[1].set_title(f"ESTA: Spearman rho(params, EM) = {rho:.2f}")
    axes[0].set_title(f"Stitched LLaMA ({plural(df['n_seeds'].max(), 'seed')})")
    axes[1].legend(loc="best", fontsize=7)
elif name == "visits":
    # Training visits of every stitch against its cost: does every deployed stitch get trained
    # enough? A deployed stitch is drawn at its fewest visits in a run that deployed it (what the
    # question asks; its mean over runs includes tasks that did not deploy it), the rest at their mean.
    methods = list(dict.fromkeys(df["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(4.5 * len(methods), 3.6), squeeze=False, sharey=True)
    for ax, m in zip(axes.flat, methods):
        g = df[df["method"] == m]
        chosen = g["deployed_runs"] > 0
        rest, dep = g[~chosen], g[chosen & ~g["anchor"]]
        ax.scatter(rest["gmacs"], rest["visits"], s=14, color="lightgrey", edgecolor="grey", linewidths=0.4,
                   label="not deployed (mean over runs)")
        ax.scatter(dep["gmacs"], dep["deployed_visits_min"], s=22, color=COLOR.get(m, "C0"),
                   label="deployed (fewest in a run deploying it)")
        a = g[g["anchor"]]
        ax.scatter(a["gmacs"], a["deployed_visits_min"].fillna(a["visits"]), marker="*", s=160,
                   color=COLOR.get(m, "C0"), edgecolor="black", linewidths=0.6, zorder=5, label="anchors")
        ax.axhline(10, color="black", lw=0.8, ls=":", label="10 visits")
        ax.set_yscale("symlog", linthresh=1)  # a stitch never visited stays on the plot, at 0
        ax.set_ylim(bottom=-0.3)
        ax.set_xlabel("FLOPs (GMACs)")
        ax.set_ylabel(f"training visits ({plural(g['runs'].max(), 'run')})")
        fewest = g.loc[chosen, "deployed_visits_min"].min()
        ax.set_title(f"{LABEL.get(m, m)}: a deployed stitch had ≥ {fewest:.0f} visits")
        ax.legend(loc="best", fontsize=7)
elif name.startswith("ablation_"):
    fig, ax = plt.subplots(figsize=(5.5, 4))
    def ablation_label(v, g):
        r = g.iloc[0]
        text = f"{v}: mean {100 * r['mean_accuracy']:.1f} %"
        if name in ("ablation_peft", "ablation_stages"):  # and what it costs to train
            text += (f", {r['trainable_params'] / 1e6:.2f} M trainable, {r['train_wall_s']:.0f} s,"
                     f" {r['train_peak_rss_mb']:.0f} MB")
        return text

    curves(ax, df, "label", ablation_label)
    if name in ("ablation_peft", "ablation_stages"):  # long labels: the legend goes below the axes
        fig.set_size_inches(6.5, 5.6)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7)
    ax.set_title(f"Ablation: {name.removeprefix('ablation_')} ({plural(df['n_tasks'].max(), 'task')}, ESTA)")
elif name == "importance_vs_accuracy":  # every deployment score against test accuracy, per task
    tasks = list(dict.fromkeys(df["task"]))
    scores = [s for s in ("importance", "loss", "loss_batch", "evaluate") if s in set(df["score_name"])]
    xlabel = {"importance": "final importance $I_s$", "loss": "training loss, end of training",
              "loss_batch": "loss on a fixed training batch", "evaluate": "selection-split accuracy"}
    fig, axes = plt.subplots(len(scores), len(tasks), figsize=(3.3 * len(tasks), 2.9 * len(scores)), squeeze=False)
    for row, score in zip(axes, scores):
        for ax, task in zip(row, tasks):
            g = df[(df["task"] == task) & (df["score_name"] == score)]
            sns.scatterplot(x=g["score"], y=100 * g["test_accuracy"], hue=g["anchor"], style=g["seed"],
                            palette={True: "C1", False: "C0"}, ax=ax, s=18, legend=ax is axes.flat[0])
            if score == "importance":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no overlap
            ax.set_title(f"{task.split('/')[-1]}: ρ = {g.groupby('seed')['rho'].first().mean():.2f}", fontsize=8)
            ax.set_xlabel(xlabel[score], fontsize=7)
            ax.set_ylabel("test accuracy (%)", fontsize=7)
    fig.suptitle("Deployment scores against test accuracy (ρ: Spearman, oriented so that > 0 ranks well)")
elif name.startswith("all_stitches_"):  # the whole palette of one task, both methods
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for m, g in df.groupby("method", sort=False):
        color = COLOR.get(m, "C0")
        ax.errorbar(g["gmacs"], 100 * g["accuracy"], yerr=100 * g["accuracy_std"], fmt="o", ms=3.5, alpha=0.45,
                    color=color, lw=0.6, label=f"{LABEL.get(m, m)}: every stitch")
        d = g[g["deployed_share"] > 0]
        ax.scatter(d["gmacs"], 100 * d["accuracy"], s=20 + 50 * d["deployed_share"], facecolor="none",
                   edgecolor=color, linewidths=1.3, label=f"{LABEL.get(m, m)}: deployed (size: share of seeds)")
        front = g[g["front_member"]].sort_values("gmacs")
        ax.step(front["gmacs"], 100 * front["accuracy"], where="post", color=color, lw=1.2,
                label=f"{LABEL.get(m, m)}: Pareto front")
        a = g[g["anchor"]]
        ax.scatter(a["gmacs"], 100 * a["accuracy"], marker="*", s=140, color=color, edgecolor="black",
                   linewidths=0.6, zorder=5)
    ax.set_xlabel("FLOPs (GMACs)")
    ax.set_ylabel("Top-1 test accuracy (%)")
    ax.set_title(f"{df['task'].iloc[0]}: every stitch ({plural(df['seeds'].max(), 'seed')}, mean ± std)")
    ax.legend(loc="lower right", fontsize=6)
elif name == "grad_interference":
    fig, ax = plt.subplots(figsize=(5.5, 4))
    d = df.assign(progress=(100 * df["frac"]).round().astype(int).astype(str) + " %",
                  biases=df["stitch_biases"].map({True: "stitch-specific biases", False: "shared biases"}))
    sns.boxplot(data=d, x="progress", y="cosine", hue="biases", ax=ax, fliersize=1.5)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("training progress")
    ax.set_ylabel("cosine of shared-LoRA gradients")
    ax.set_title(f"Gradient interference between stitches ({plural(d['task'].nunique(), 'task')})")
else:
    raise ValueError(f"no plot is defined for {name!r}")

fig.tight_layout()
for out in snakemake.output:
    tmp = runtime.atomic_path(out)
    fig.savefig(tmp, format=out.rsplit(".", 1)[1], dpi=150)
    tmp.replace(out)
