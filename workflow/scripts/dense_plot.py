"""The dense figures: deployed test mIoU vs GMACs of ESTA and SN-Net (mean ± std over seeds, anchors
starred, trainable parameters in the legend), or every stitch of one task. Plots only."""

from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from esta import runtime  # noqa: E402

runtime.start_job(snakemake)
LABEL, COLOR = {"esta": "ESTA (PST)", "snnet": "SN-Net (full)"}, {"esta": "C3", "snnet": "C0"}
sns.set_theme(style="whitegrid", context="paper")
df = pd.read_csv(snakemake.input.table)
if df.empty:
    raise ValueError(f"{snakemake.input.table} is empty: nothing to plot")
tasks = list(dict.fromkeys(df["task"]))
fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
for ax, task in zip(axes[0], tasks):
    for method, g in df[df.task == task].groupby("method"):
        g = g.sort_values("gmacs")
        label = LABEL[method]
        if "trainable_params" in g:
            label += f", {g['trainable_params'].iloc[0] / 1e6:.2f} M trainable"
        line = "-" if "is_anchor" in g else ""
        ax.errorbar(g["gmacs"], 100 * g["miou"], yerr=100 * g["miou_std"].fillna(0), fmt="o" + line, ms=3,
                    color=COLOR[method], label=label, capsize=2, alpha=0.9 if line else 0.6)
        anchors = g[g["front"] == g["end"]]
        ax.scatter(anchors["gmacs"], 100 * anchors["miou"], marker="*", s=120, color=COLOR[method],
                   edgecolor="k", zorder=5)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("GMACs per image (head included)")
    ax.set_ylabel("test mIoU (%)")
    ax.set_title(f"dense/{task}" + ("" if "is_anchor" in df else ": every stitch"))
    ax.legend(fontsize=7)
fig.tight_layout()
for path in (snakemake.output.pdf, snakemake.output.png):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
