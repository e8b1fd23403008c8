"""The Stitched LLaMA Pareto table (CSV twin of results/figures/llm_pareto): NLL and exact match of
ESTA's deployed stitches (per variant) and of each anchor adapted alone, mean ± std over seeds, with
the rank correlation of stitch parameters and exact match per method."""

from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from esta import runtime

log = runtime.start_job(snakemake)
inp, p = snakemake.input, snakemake.params
frames = []
for f, folder, variant in zip(inp.esta, inp.exported, p.esta_variants):
    df = pd.read_csv(f).assign(method="esta" if variant == "default" else f"esta_{variant}")
    missing = [s for s in df["stitch_id"] if not (Path(folder) / f"stitch{s}").is_dir()]
    if missing:
        raise ValueError(f"{folder}: deployed stitches {missing} of {f} were not exported")
    frames.append(df)
frames += [pd.read_csv(f).assign(method="anchor_ft") for f in inp.anchor_ft]
allm = pd.concat(frames, ignore_index=True)
keys = ["method", "stitch_id", "name", "params"]
table = allm.groupby(keys, sort=False).agg(
    nll=("nll", "mean"), nll_std=("nll", "std"), em=("em", "mean"), em_std=("em", "std"), n_seeds=("seed", "nunique"),
).reset_index().fillna({"nll_std": 0.0, "em_std": 0.0})
table["anchor"] = table["stitch_id"] < p.n_anchors
rho = {m: spearmanr(g["params"], g["em"]).statistic if len(g) > 2 else float("nan")
       for m, g in table.groupby("method")}
table["spearman_params_em"] = table["method"].map(rho)
table = table.sort_values(["method", "params"]).reset_index(drop=True)
log.info("\n%s", table.to_string(index=False))
runtime.write_csv(table, snakemake.output[0])
