"""FLOPs intervals, deployment, Pareto fronts and suite averages (ESTA §4, Fig. 1; spec §6, §7, §9).

Both methods deploy one stitch per FLOPs interval: the range of all stitches' MACs (head excluded)
is split into K equal intervals (``select_deployed``: ESTA by training-time importance, SN-Net by
selection-split accuracy). A suite-average curve takes, for interval i, the mean over tasks of
the accuracy of the stitch deployed in interval i, placed at the mean of their MACs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from esta.scores import LOWER_IS_BETTER, VISIT_SCORES, dominated

__all__ = ["interval_edges", "assign_intervals", "deployment_slots", "select_deployed", "deploy_by_score", "pareto_front", "suite_average",
           "with_unit", "deployed_curves", "palette_view", "accuracy_by_task", "accuracy_by_group", "mean_std"]


def interval_edges(macs: np.ndarray | pd.Series, k: int) -> np.ndarray:
    """K+1 edges of K equal intervals spanning [min(macs), max(macs)]."""
    if k < 1:
        raise ValueError(f"number of intervals must be >= 1, got {k}")
    macs = np.asarray(macs, dtype=float)
    return np.linspace(macs.min(), macs.max(), k + 1)


def assign_intervals(macs: np.ndarray | pd.Series, k: int) -> np.ndarray:
    """Interval index 0..K-1 of each value; the top edge belongs to the last interval."""
    macs = np.asarray(macs, dtype=float)
    edges = interval_edges(macs, k)
    return np.clip(np.searchsorted(edges, macs, side="right") - 1, 0, k - 1)


def deployment_slots(table: pd.DataFrame, k: int, cost: str = "macs_nohead") -> np.ndarray:
    """The deployment slot of every stitch, the groups of the `grouped` sampler: its FLOPs interval
    0..K-1, except that each anchor, always deployed as a point of its own, is a slot of its own
    (K + front). Without this an anchor competes inside its interval and can be starved (the Ti
    anchor, the only stitch that trains Ti's head, got 3-5 of 400 steps on the embedded default)."""
    slots = assign_intervals(table[cost], k)
    anchors = (table["front"] == table["end"]).to_numpy()
    slots[anchors] = k + table["front"].to_numpy()[anchors]
    return slots


def select_deployed(
    table: pd.DataFrame,
    score: pd.Series | np.ndarray,
    k: int,
    eligible: pd.Series | np.ndarray | None = None,
    cost: str = "macs_nohead",
    lower_is_better: bool = False,
) -> pd.DataFrame:
    """Deploy, per FLOPs interval, the eligible stitch of best ``score`` (highest, or lowest with
    ``lower_is_better``: a loss); always the anchors.

    ``table`` is the stitch table (``stitch_id``, ``front``, ``end``, ``macs_nohead`` at least).
    ESTA passes importance with ``eligible = visits >= min_visits`` (one stage); SN-Net and the
    evaluate-all ablation pass selection-split accuracy with every stitch eligible. Returns one row
    per deployed stitch: stitch_id, interval, score, reason ("interval" or "anchor"), dominated (a
    cheaper deployed stitch scores at least as well, ``esta.scores.dominated``), sorted by MACs.
    ``cost`` is the column the intervals split (Stitched LLaMA: ``params``, spec §11).
    """
    t = table.reset_index(drop=True).copy()
    t["score"] = np.asarray(score, dtype=float)
    t["rank_score"] = -t["score"] if lower_is_better else t["score"]
    t["eligible"] = True if eligible is None else np.asarray(eligible, dtype=bool)
    t["interval"] = assign_intervals(t[cost], k)
    cand = t[t["eligible"] & t["score"].notna()]
    best = cand.loc[cand.groupby("interval")["rank_score"].idxmax()].assign(reason="interval")
    anchors = t[(t["front"] == t["end"]) & ~t["stitch_id"].isin(best["stitch_id"])]
    out = pd.concat([best, anchors.assign(reason="anchor")]).sort_values(cost).reset_index(drop=True)
    out["dominated"] = dominated(out[cost], out["rank_score"])
    return out[["stitch_id", "interval", "score", "reason", "dominated", cost]]


def deploy_by_score(
    table: pd.DataFrame,
    score_name: str,
    score: pd.Series | np.ndarray,
    k: int,
    visits: pd.Series | np.ndarray | None = None,
    min_visits: int = 0,
    cost: str = "macs_nohead",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One-stage deployment by a named score (``esta.scores``), the same for every family and method:
    losses lowest, the others highest; a score that is a statistic of visits (importance, loss) only
    among stitches with at least ``min_visits`` of the ``visits`` that produced it
    (``esta.scores.gate_visits``: the loss's are those inside its window). ``score`` and ``visits`` follow ``table``'s
    rows. Returns the deployed rows (``select_deployed``'s, plus ``score_name`` and, given ``visits``,
    ``visits``) and every stitch's score (``stitch_id, score_name, score, eligible``), which the score
    analyses rank."""
    eligible = None
    if score_name in VISIT_SCORES:
        if visits is None:
            raise ValueError(f"score {score_name!r} is a statistic of visits: deploying by it needs the visits")
        eligible = np.asarray(visits) >= min_visits
    deployed = select_deployed(table, score, k, eligible=eligible, cost=cost,
                               lower_is_better=score_name in LOWER_IS_BETTER).assign(score_name=score_name)
    if visits is not None:
        by_id = pd.Series(np.asarray(visits), index=table["stitch_id"].to_numpy())
        deployed["visits"] = by_id.loc[deployed["stitch_id"]].to_numpy()
    scores = pd.DataFrame(dict(stitch_id=table["stitch_id"].to_numpy(), score_name=score_name,
                               score=np.asarray(score, dtype=float), eligible=True if eligible is None else eligible))
    return deployed, scores


def pareto_front(df: pd.DataFrame, x: str = "gmacs", y: str = "accuracy") -> pd.DataFrame:
    """Rows not dominated by another row (lower-or-equal x and higher-or-equal y, one strictly),
    sorted by x."""
    d = df.sort_values([x, y], ascending=[True, False])
    best = -np.inf
    keep = []
    for idx, yv in zip(d.index, d[y]):
        if yv > best:
            keep.append(idx)
            best = yv
    return d.loc[keep]


def suite_average(deployed: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Mean over tasks of the accuracy and MACs of the stitch deployed in each interval.

    ``deployed`` has one row per (task, interval) with columns ``task, interval, gmacs, accuracy``
    plus the grouping columns ``by`` (e.g. method, seed). Anchors deployed outside the interval
    choice carry ``interval = -1 - anchor index`` and are averaged the same way.
    """
    by = list(by or [])
    g = deployed.groupby(by + ["interval"], as_index=False)
    out = g.agg(gmacs=("gmacs", "mean"), accuracy=("accuracy", "mean"), n_tasks=("task", "nunique"))
    return with_unit(out, deployed).sort_values(by + ["gmacs"]).reset_index(drop=True)


def with_unit(out: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    """``out`` with the ``macs_unit`` of ``source`` (per image, per token), when ``source`` has one:
    MACs are averaged only within one unit."""
    if "macs_unit" not in source:
        return out
    units = sorted(set(source["macs_unit"]))
    if len(units) != 1:
        raise ValueError(f"cannot average MACs counted in different units {units}")
    return out.assign(macs_unit=units[0])


def deployed_curves(deployed: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Accuracy-vs-FLOPs points of the deployed stitches, mean ± std over seeds.

    ``deployed`` is the tidy table of deployed stitches (method, task, seed, stitch_id, front, end,
    interval, reason, gmacs, test_accuracy, trainable_params). Within each group of ``by`` (default
    method) and seed, point i averages over tasks the stitch deployed in interval i; anchors, always
    deployed, are points of their own with ``interval = -1 - anchor`` and ``anchor = True``.
    Intervals where some task of the group deployed nothing are left out.
    """
    by = list(by or ["method"])
    d = deployed.rename(columns={"test_accuracy": "accuracy"})
    curve = d[d["reason"] == "interval"]
    anchors = d[d["front"] == d["end"]].assign(interval=lambda t: -1 - t["front"])
    per_seed = suite_average(pd.concat([curve, anchors]), by=by + ["seed"])
    # A mean over some of the tasks is not comparable with the others: keep the intervals in which
    # every task of the group deployed a stitch (ESTA may leave an interval empty: min_visits).
    n_all = deployed.groupby(by)["task"].nunique().rename("n_all").reset_index()
    per_seed = per_seed.merge(n_all, on=by)
    per_seed = per_seed[per_seed["n_tasks"] == per_seed["n_all"]].drop(columns="n_all")
    out = per_seed.groupby(by + ["interval"], as_index=False).agg(
        gmacs=("gmacs", "mean"),
        accuracy=("accuracy", "mean"),
        accuracy_std=("accuracy", "std"),
        n_seeds=("seed", "nunique"),
        n_tasks=("n_tasks", "min"),
    )
    out["accuracy_std"] = out["accuracy_std"].fillna(0.0)
    out["anchor"] = out["interval"] < 0
    params = deployed.groupby(by, as_index=False)["trainable_params"].mean()
    params["trainable_params"] = params["trainable_params"].round().astype(int)
    out = with_unit(out.merge(params, on=by), deployed)
    return out.sort_values(by + ["anchor", "gmacs"]).reset_index(drop=True)


def mean_std(per_seed: pd.DataFrame, by: list[str], col: str = "accuracy") -> pd.DataFrame:
    """Mean and standard deviation over seeds of ``col`` (std 0 with one seed, never NaN)."""
    out = per_seed.groupby(by, as_index=False).agg(
        **{f"{col}_mean": (col, "mean"), f"{col}_std": (col, "std"), "seeds": ("seed", "nunique")}
    )
    out[f"{col}_std"] = out[f"{col}_std"].fillna(0.0)
    return out


def accuracy_by_task(deployed: pd.DataFrame) -> pd.DataFrame:
    """Per method and task: the mean test accuracy over the deployed stitches of a seed (the area
    under the deployed curve, per stitch), and of the best deployed stitch; mean ± std over seeds."""
    keys = ["method", "task", "group"]
    per_seed = deployed.groupby(keys + ["seed"], as_index=False).agg(
        accuracy=("test_accuracy", "mean"), best=("test_accuracy", "max"), deployed=("stitch_id", "size"))
    out = mean_std(per_seed, keys)
    best = per_seed.groupby(keys, as_index=False).agg(best_accuracy_mean=("best", "mean"),
                                                     deployed=("deployed", "mean"))
    return out.merge(best, on=keys).sort_values(["group", "task", "method"]).reset_index(drop=True)


def accuracy_by_group(deployed: pd.DataFrame, groups: tuple[str, ...]) -> pd.DataFrame:
    """Per method and group (in ``groups`` order, then "mean" over all tasks): the mean over the
    group's tasks of the per-task accuracy of ``accuracy_by_task``, mean ± std over seeds."""
    per_task = deployed.groupby(["method", "task", "group", "seed"], as_index=False).agg(
        accuracy=("test_accuracy", "mean"))
    rows = [per_task, per_task.assign(group="mean")]
    per_seed = pd.concat(rows).groupby(["method", "group", "seed"], as_index=False).agg(
        accuracy=("accuracy", "mean"), tasks=("task", "nunique"))
    out = mean_std(per_seed, ["method", "group"]).merge(
        per_seed.groupby(["method", "group"], as_index=False)["tasks"].max(), on=["method", "group"])
    order = {g: i for i, g in enumerate([*groups, "mean"])}
    return out.sort_values(["group", "method"], key=lambda c: c.map(order) if c.name == "group" else c
                           ).reset_index(drop=True)


def palette_view(runs: pd.DataFrame, stitches: pd.DataFrame) -> pd.DataFrame:
    """The whole palette of one task: every stitch's test accuracy, mean ± std over seeds, per method,
    with how often it was deployed and whether it is on the method's Pareto front (of the means).

    ``runs`` has one row per (method, seed, stitch_id) with ``test_accuracy`` and ``deployed`` (bool);
    ``stitches`` gives ``stitch_id, front, end, gmacs``. A dip in a deployed curve is then either the
    selection (a better stitch of that cost was not deployed) or the stitches themselves."""
    g = runs.groupby(["method", "stitch_id"], sort=False)
    out = g.agg(accuracy=("test_accuracy", "mean"), accuracy_std=("test_accuracy", "std"),
                seeds=("seed", "nunique"), deployed_share=("deployed", "mean")).reset_index()
    out["accuracy_std"] = out["accuracy_std"].fillna(0.0)
    out = out.merge(stitches[["stitch_id", "front", "end", "gmacs"]], on="stitch_id")
    out["anchor"] = out["front"] == out["end"]
    out["front_member"] = False
    for _, part in out.groupby("method"):
        out.loc[pareto_front(part, "gmacs", "accuracy").index, "front_member"] = True
    return out.sort_values(["method", "gmacs"]).reset_index(drop=True)
