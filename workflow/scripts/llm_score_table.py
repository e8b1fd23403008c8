"""Training-time deployment scores of Stitched LLaMA against held-out exact match, judged like with like
(spec §6, §11; ``esta.compare``, the same functions as the ViT family's table): every stitch evaluated
(llm_evaluate_stitches), Spearman rho over the stitches every score can rank, and over the parameter
intervals the oracle (best exact match per interval) fills each deployment's mean exact match, area under
its exact-match-vs-log-parameters curve and hypervolume; a missed interval costed as its worst stitch."""

import numpy as np
import pandas as pd

from esta import runtime
from esta.compare import judge_run, summarize
from esta.pareto import deploy_by_score

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
stitches = pd.read_csv(inp.stitches)
rows = []
n = len(p.selections)
for i, seed in enumerate(p.seeds):
    em = pd.read_csv(inp.metrics[i]).set_index("stitch_id")["em"]
    missing = sorted(set(stitches["stitch_id"]) - set(em.dropna().index))
    if missing:
        raise ValueError(f"{inp.metrics[i]}: no exact match for stitches {missing} (llm.eval.n_em must be > 0)")
    selections, wall = {}, {}
    for j, how in enumerate(p.selections):
        selections[how] = (pd.read_csv(inp.scores[i * n + j]), pd.read_csv(inp.deployed[i * n + j]))
        wall[how] = float(pd.read_csv(inp.bench[i * n + j], sep="\t")["s"].sum())
    oracle, scores = deploy_by_score(stitches, "oracle", stitches["stitch_id"].map(em).to_numpy(), p.intervals,
                                     cost="params")
    selections["oracle"] = (scores, oracle)
    for row in judge_run(stitches, em, selections, p.intervals, cost="params"):
        rows.append(dict(task="llm", seed=seed, wall_s=wall.get(row["selection"], np.nan), **row))
per_run = pd.DataFrame(rows)
summary = summarize(per_run, reference="oracle")
summary = summary[summary["task"] != "mean"].merge(
    per_run.groupby("selection", as_index=False).agg(rho_per_seed=("rho", lambda r: " / ".join(f"{x:.2f}" for x in r))),
    on="selection")
log.info("\n%s", summary[["selection", "rho", "rho_n", "rho_per_seed", "accuracy", "auc", "hypervolume", "missed",
                          "wall_s"]].round(3).to_string(index=False))
runtime.write_csv(summary, snakemake.output[0])
