"""Tables of the dense-prediction experiment (spec §14; the ESTA paper's open question 1): every stitch's
mIoU with its cost, the deployed stitches of each method, and the comparison across seeds.

Deployment is ``esta.pareto.deploy_by_score`` as for classification: per FLOPs interval (head-free MACs,
``macs_nohead``) the stitch with the best score, anchors always. ``evaluate`` is the selection split's
mIoU (SN-Net's evaluation pass); ``loss_batch`` the loss on fixed training images after training;
``importance`` / ``loss`` the training-time statistics of ESTA's sampler.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from esta.pareto import deploy_by_score
from esta.scores import gate_visits

__all__ = ["fixed_seg_batch", "split_table", "stitch_table", "deploy", "pareto_dense", "summary"]


def fixed_seg_batch(dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, masks)`` of ``n`` items drawn by a permutation seeded with ``seed`` (the fixed batch of
    LS init and of the ``loss_batch`` score; ``esta.vit.build.fixed_batch`` for masks)."""
    idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    items = [dataset[i] for i in idx]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def split_table(costs: pd.DataFrame, scores: dict[int, dict], split: str, class_names: list[str]) -> pd.DataFrame:
    """One row per stitch of one split's evaluation (``evaluate_stitches``): its costs, ``<split>_miou``
    and ``<split>_pixel_acc``; the test split's adds its IoU per class (``iou_<class>``)."""
    rows = []
    for s in costs.itertuples(index=False):
        t = scores[s.stitch_id]
        row = dict(s._asdict(), **{f"{split}_miou": t["miou"], f"{split}_pixel_acc": t["pixel_acc"]})
        if split == "test":
            row.update({f"iou_{c}": v for c, v in zip(class_names, t["iou"])})
        rows.append(row)
    return pd.DataFrame(rows)


def stitch_table(selection: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Every stitch of a run from its two :func:`split_table` s: costs, selection mIoU, test mIoU and
    pixel accuracy, test IoU per class."""
    if selection["stitch_id"].tolist() != test["stitch_id"].tolist():
        raise ValueError("the selection and test tables list different stitches")
    costs = [c for c in test.columns if c not in ("test_miou", "test_pixel_acc") and not c.startswith("iou_")]
    out = test[costs].assign(selection_miou=selection["selection_miou"].to_numpy())
    return pd.concat([out, test[[c for c in test.columns if c not in costs]]], axis=1)


def deploy(table: pd.DataFrame, score_name: str, score, intervals: int, stats: pd.DataFrame | None = None,
           min_visits: int = 0) -> pd.DataFrame:
    """The deployed rows of ``table`` by ``score_name`` (``esta.pareto.deploy_by_score``)."""
    visits = None if stats is None else gate_visits(score_name, stats.set_index("stitch_id").loc[table["stitch_id"]])
    deployed, _ = deploy_by_score(table, score_name, np.asarray(score, dtype=float), intervals, visits=visits,
                                  min_visits=min_visits)
    return deployed


def _rho(g: pd.DataFrame) -> float:
    """Spearman's rho of GMACs and test mIoU over one run's deployed stitches (NaN when undefined)."""
    if len(g) < 3 or g["gmacs"].nunique() < 2 or g["test_miou"].nunique() < 2:
        return float("nan")
    return float(g["gmacs"].rank().corr(g["test_miou"].rank()))


def pareto_dense(deployed: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every deployed stitch's test mIoU, per task and method (the figure's
    CSV twin). ``deployed`` holds the rows of every run with columns task, method, seed."""
    keys = ["task", "method", "stitch_id", "front", "end", "j", "k", "gmacs", "is_anchor"]
    d = deployed.assign(is_anchor=deployed["front"] == deployed["end"])
    out = d.groupby(keys, as_index=False).agg(miou=("test_miou", "mean"), miou_std=("test_miou", "std"),
                                               pixel_acc=("test_pixel_acc", "mean"), seeds=("seed", "nunique"),
                                               trainable_params=("trainable_params", "first"))
    return out.sort_values(["task", "method", "gmacs"]).reset_index(drop=True)


def summary(deployed: pd.DataFrame, runs: pd.DataFrame, anchors: pd.DataFrame) -> pd.DataFrame:
    """Per task and method: trainable parameters, training time, steps, deployed stitches, mean test
    mIoU of the deployed stitches and rho(GMACs, mIoU), each mean ± std over seeds; plus each anchor
    fine-tuned alone (``anchors``: task, seed, anchor, test_miou, wall_s, trainable_params)."""
    per_run = deployed.groupby(["task", "method", "seed"]).apply(
        lambda g: pd.Series(dict(deployed=len(g), mean_miou=g["test_miou"].mean(), rho=_rho(g))),
        include_groups=False).reset_index()
    per_run = per_run.merge(runs, on=["task", "method", "seed"])
    agg = per_run.groupby(["task", "method"]).agg(
        seeds=("seed", "nunique"), trainable_params=("trainable_params", "mean"), steps=("steps", "mean"),
        train_wall_s=("wall_s", "mean"), deployed=("deployed", "mean"), mean_miou=("mean_miou", "mean"),
        mean_miou_std=("mean_miou", "std"), rho=("rho", "mean"), rho_std=("rho", "std")).reset_index()
    alone = anchors.groupby(["task", "anchor"]).agg(
        seeds=("seed", "nunique"), trainable_params=("trainable_params", "mean"), train_wall_s=("wall_s", "mean"),
        mean_miou=("test_miou", "mean"), mean_miou_std=("test_miou", "std")).reset_index()
    alone = alone.assign(method=[f"anchor{a} alone" for a in alone["anchor"]], deployed=1).drop(columns="anchor")
    return pd.concat([agg, alone], ignore_index=True)
