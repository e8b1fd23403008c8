"""lm-evaluation-harness on every exported deployed stitch (spec §11 "lm-eval adapter"): each stitch
folder is loaded with esta.llm.export.load_stitch and scored through esta.llm.lm_eval_adapter.StitchLM
on the local tasks of llm.lm_eval; one row per (variant, seed, stitch, task, metric)."""

from pathlib import Path

import pandas as pd

from esta import runtime
from esta.llm.export import load_stitch
from esta.llm.lm_eval_adapter import score_stitches

log = runtime.start_job(snakemake)
p, inp = snakemake.params, snakemake.input
frames = []
for (variant, seed), exported in zip(p.runs, inp.exported):
    folders = sorted(f for f in Path(exported).iterdir() if (f / "stitch_config.json").is_file())
    stitches = {f.name: load_stitch(f) for f in folders}
    scores = score_stitches(stitches, p.lm_eval["tasks"], inp.tasks, p.lm_eval["limit"], p.batch_size)
    ids = {name: model.config["stitch_id"] for name, (model, _) in stitches.items()}
    frames.append(scores.assign(variant=variant, seed=seed, stitch_id=scores["label"].map(ids)))
    log.info("%s seed %s: %d stitches scored on %s", variant, seed, len(stitches), p.lm_eval["tasks"])
table = pd.concat(frames, ignore_index=True)[["variant", "seed", "stitch_id", "label", "task", "metric", "value"]]
runtime.write_csv(table.sort_values(["variant", "seed", "stitch_id", "task", "metric"]), snakemake.output[0])
