"""The dense tasks' rows of the workflow's cross-task tables (spec §9 tables, §14 dense prediction):
``accuracy_by_task.csv`` and ``cost.csv`` hold them beside the classification rows, told apart by their
``metric`` column (``accuracy`` / ``miou``).

- :func:`accuracy_rows`: the deployed stitches of every dense run (test mIoU) and each anchor fine-tuned
  alone with its SETR head (SN-Net's adapt step, the ``anchor_ft`` reference), in the shape
  ``esta.pareto.accuracy_by_task`` reads (task ``dense/<name>``, group ``dense``).
- :func:`cost_rows`: ESTA ``train`` (ls_init + train_esta) and ``deploy``, SN-Net ``adapt``
  (snnet_adapt), ``stitch`` (ls_init + snnet_stitch) and ``deploy``, from the dense runs' benchmark
  files, train.json / adapt JSONs and deployed stitches. ``deploy`` is evaluate_stitches on both splits
  plus select_esta / snnet_deploy for both methods: ESTA's includes scoring every stitch on both splits
  for the tables, so it overstates what deploying ESTA by a training-time score needs. Parameters are
  counted on the segmenter (SETR heads included) on the meta device, stored parameters by ``esta.analysis.stored_params`` as for classification.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

__all__ = ["run_of", "accuracy_rows", "cost_rows", "DENSE_STEPS"]

# (method, step) -> the dense rules whose benchmark files it sums, with the job-name prefix
DENSE_STEPS = {
    ("esta", "train"): [("ls_init", "esta/"), ("train_esta", "")],
    ("esta", "deploy"): [("evaluate_stitches", "esta/"), ("select_esta", "")],
    ("snnet", "adapt"): [("snnet_adapt", "")],
    ("snnet", "stitch"): [("ls_init", "snnet/"), ("snnet_stitch", "")],
    ("snnet", "deploy"): [("evaluate_stitches", "snnet/"), ("snnet_deploy", "")],
}


def run_of(path: str | Path) -> dict:
    """method, task (``dense/<name>``) and seed of a file of a dense run,
    ``results/<method>/<variant>/dense/<name>/seed<seed>/...``."""
    parts = Path(path).parts
    for j in range(len(parts) - 3, 1, -1):
        if parts[j] == "dense" and re.fullmatch(r"seed\d+", parts[j + 2]):
            return dict(method=parts[j - 2], task=f"dense/{parts[j + 1]}", seed=int(parts[j + 2].removeprefix("seed")))
    raise ValueError(f"{path} is not a file of a dense run (<method>/<variant>/dense/<name>/seed<seed>/...)")


def _json(files) -> list[dict]:
    return [json.loads(Path(f).read_text()) for f in files]


def accuracy_rows(deployed_files, adapt_files) -> pd.DataFrame:
    """One row per deployed stitch of each dense run and per anchor fine-tuned alone (method
    ``anchor_ft``): method, task (``dense/<name>``), group ``dense``, seed, stitch_id, and the test mIoU
    in ``test_accuracy`` (the column ``esta.pareto.accuracy_by_task`` averages)."""
    rows = []
    for f in deployed_files:
        r, d = run_of(f), pd.read_csv(f)
        rows.append(pd.DataFrame(dict(method=r["method"], task=r["task"], group="dense", seed=r["seed"],
                                      stitch_id=d["stitch_id"], test_accuracy=d["test_miou"])))
    alone = [dict(method="anchor_ft", task=run_of(f)["task"], group="dense", seed=a["seed"], stitch_id=a["anchor"],
                  test_accuracy=a["test_miou"]) for f, a in zip(adapt_files, _json(adapt_files))]
    return pd.concat([*rows, pd.DataFrame(alone)], ignore_index=True)


def cost_rows(bench: pd.DataFrame, info_files, adapt_files, deployed_files, manifests, family, img_size: int,
              hidden: int, tuning: dict) -> pd.DataFrame:
    """cost.csv's columns (but ``metric``) per (method, step) of the dense runs. ``bench``: the dense
    jobs' benchmark rows (``esta.runtime.read_benchmarks``); ``tuning``: method -> its
    ``esta.vit.tuning.TuningConfig``."""
    from esta.analysis import stored_params
    import torch  # here, not at the top: accuracy_tables (accuracy_rows) is a light job without torch

    from esta.vit.seg import assemble_seg

    info, adapt = _json(info_files), _json(adapt_files)
    classes = {m["task"]: m["num_classes"] for m in _json(manifests)}
    n = len({(r["task"], r["seed"]) for r in info})
    if n == 0:
        raise ValueError("cost_rows: no dense run (train.json) given")
    steps = {("esta", "train"): sum(r["steps"] for r in info if r["method"] == "esta"),
             ("snnet", "stitch"): sum(r["steps"] for r in info if r["method"] == "snnet"),
             ("snnet", "adapt"): sum(r["steps"] for r in adapt)}
    trained = {m: sum(r["trainable_params"] for r in info if r["method"] == m) / n for m in ("esta", "snnet")}
    stored: dict[str, list[dict]] = {}
    for f in deployed_files:
        r = run_of(f)
        with torch.device("meta"):
            model = assemble_seg(family, classes[r["task"]], img_size, hidden, None, None, tuning[r["method"]])
        stored.setdefault(r["method"], []).append(stored_params(model, pd.read_csv(f)["stitch_id"].tolist()))
    kept = {m: {k: sum(s[k] for s in v) / len(v) for k in ("task", "total")} for m, v in stored.items()}
    adapted = pd.DataFrame(adapt).groupby(["task", "seed"])["trainable_params"].sum().mean()
    e, s = kept["esta"], kept["snnet"]
    # (trainable, stored task-specific, stored with the pretrained weights) after each step
    counts = {("esta", "train"): (trained["esta"], trained["esta"], trained["esta"] + e["total"] - e["task"]),
              ("esta", "deploy"): (0, e["task"], e["total"]),
              ("snnet", "adapt"): (adapted, adapted, adapted),
              ("snnet", "stitch"): (trained["snnet"], trained["snnet"], trained["snnet"]),
              ("snnet", "deploy"): (0, s["task"], s["total"])}
    rows = []
    for (method, step), rules in DENSE_STEPS.items():
        jobs = pd.concat([bench[(bench["rule"] == r) & bench["job"].str.startswith(p)] for r, p in rules])
        if jobs.empty:
            raise ValueError(f"no benchmark rows for dense {method} {step} ({rules})")
        k = steps.get((method, step), 0)
        tr, task_p, total_p = counts[(method, step)]
        rows.append(dict(method=method, step=step, jobs=len(jobs), steps=k, steps_per_task=k / n,
                         wall_s=jobs["s"].sum(), wall_s_per_task=jobs["s"].sum() / n,
                         peak_rss_mb=jobs["peak_rss_mb"].max(), trainable_params=round(tr),
                         stored_params_task=round(task_p), stored_params_total=round(total_p)))
    return pd.DataFrame(rows)
