"""Training-time deployment scores of Stitched LLaMA against held-out exact match (spec §6, §11):
Spearman rho over the stitches `llm_evaluate` scored (every stitch of the tiny pair, one per interval),
the mean exact match of each score's deployment, and the oracle (deploy by exact match)."""

import numpy as np
import pandas as pd

from esta import runtime
from esta.scores import judge, summarize

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
rows = []
n = len(p.selections)
for i, seed in enumerate(p.seeds):
    em = pd.read_csv(inp.metrics[i]).set_index("stitch_id")["em"]
    for j, how in enumerate(p.selections):
        scores, deployed = pd.read_csv(inp.scores[i * n + j]), pd.read_csv(inp.deployed[i * n + j])
        wall = float(pd.read_csv(inp.bench[i * n + j], sep="\t")["s"].sum())
        rows.append(dict(task="llm", seed=seed, selection=how, wall_s=wall, **judge(scores, deployed, em)))
    oracle = pd.DataFrame(dict(stitch_id=em.index, score_name="oracle", score=em.to_numpy()))
    rows.append(dict(task="llm", seed=seed, selection="oracle", wall_s=np.nan,
                     **judge(oracle, oracle.assign(dominated=False), em)))
per_run = pd.DataFrame(rows)
summary = summarize(per_run, reference="oracle")
summary = summary[summary["task"] != "mean"].merge(
    per_run.groupby("selection", as_index=False).agg(rho_per_seed=("rho", lambda r: " / ".join(f"{x:.2f}" for x in r))),
    on="selection")
log.info("\n%s", summary[["selection", "rho", "rho_per_seed", "accuracy", "wall_s"]].round(3).to_string(index=False))
runtime.write_csv(summary, snakemake.output[0])
