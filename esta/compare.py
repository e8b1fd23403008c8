"""Comparing deployment scores like with like (spec §6, "Comparing scores like with like"; issue 31).

Every score of one run (one trained model: task and seed) is judged over the same sets:

- **The intervals**: the cost intervals the oracle fills, i.e. every interval of ``esta.pareto.assign_intervals``
  that holds a stitch with a known accuracy. A score's point in an interval is the stitch it deployed there
  (its interval pick, else an anchor, always deployed, that lies inside it). An interval a visit-gated score
  left empty is a **miss, costed as the interval's worst stitch**: its point is the least accurate stitch of
  that interval, at that stitch's cost. **[decision: a miss is costed, not filled by the score's best-scored
  eligible stitch: a gated score leaves an interval empty exactly because no stitch of it is eligible, and
  skipping a cheap, weak interval must not raise the score's number]** ``accuracy`` is the mean over these
  intervals, so no score's exceeds the oracle's (the oracle deploys each interval's best).
- **The curve**: the interval points and the anchors (which every score deploys), accuracy against log cost
  normalised to the stitch table's range (``u = 0`` at the cheapest stitch, 1 at the dearest). ``auc`` is the
  area under the curve's linear interpolation over the range every judged curve of the run covers, divided by
  that range's width: a mean accuracy over log-FLOPs, the single number per score. ``hypervolume`` is the area
  the curve's points dominate (cheaper, more accurate) against the fixed reference point ``(u, accuracy) =
  (1, 0)``.
- **ρ**: Spearman's ρ of the oriented score against accuracy over one stitch set per run, the stitches that
  every score named in ``rank_over`` can rank (a finite score) and whose accuracy is known; ``rho_n`` is the
  number of pairs it used. An undefined ρ (fewer than 3 pairs, a constant side) is NaN: ``summarize`` leaves
  it out of means and counts it (``rho_undefined``).

Each row also says how many stitches the score ``deployed``, ``ranked`` (had a finite score for) and
``missed`` (intervals it left empty).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from esta.pareto import assign_intervals, pareto_front
from esta.scores import oriented, spearman

__all__ = ["REFERENCE_POINT", "unit_log_cost", "interval_points", "curve_area", "hypervolume", "judge_run",
           "summarize"]

REFERENCE_POINT = (1.0, 0.0)  # (normalised log cost, accuracy): the dearest stitch at accuracy 0


def unit_log_cost(cost, table_cost) -> np.ndarray:
    """``log(cost)`` mapped linearly so that the cheapest of ``table_cost`` is 0 and the dearest 1."""
    table_cost = np.asarray(table_cost, dtype=float)
    if not (table_cost > 0).all():
        raise ValueError(f"costs must be positive to be compared on a log scale, got min {table_cost.min()}")
    lo, hi = np.log(table_cost.min()), np.log(table_cost.max())
    if hi == lo:
        raise ValueError("every stitch has the same cost: there is no cost range to compare deployments over")
    return (np.log(np.asarray(cost, dtype=float)) - lo) / (hi - lo)


def interval_points(table: pd.DataFrame, deployed: pd.DataFrame, accuracy: pd.Series, k: int,
                    cost: str = "macs_nohead") -> pd.DataFrame:
    """One row per interval that holds a stitch of known ``accuracy`` (stitch_id -> accuracy): the stitch
    ``deployed`` put there (its ``reason == "interval"`` row, else a deployed anchor inside the interval)
    or, where it put none, the interval's least accurate stitch with ``missed`` True. Columns: interval,
    stitch_id, cost, accuracy, missed."""
    t = table.reset_index(drop=True)
    t = t.assign(interval=assign_intervals(t[cost], k), accuracy=t["stitch_id"].map(accuracy).astype(float))
    known = t[np.isfinite(t["accuracy"].to_numpy())]
    worst = known.loc[known.groupby("interval")["accuracy"].idxmin()].set_index("interval")
    on = t.set_index("stitch_id")
    ids = deployed["stitch_id"].to_numpy()
    unknown = [int(s) for s in ids if not np.isfinite(on.loc[s, "accuracy"])]
    if unknown:
        raise ValueError(f"deployed stitches {unknown} have no accuracy to be judged by")
    d = pd.DataFrame(dict(stitch_id=ids, interval=on.loc[ids, "interval"].to_numpy(),
                          pick=(deployed["reason"] == "interval").to_numpy()))
    rows = []
    for i, w in worst.iterrows():
        here = d[d["interval"] == i].sort_values("pick", ascending=False)  # the interval pick first
        sid, missed = (int(here["stitch_id"].iloc[0]), False) if len(here) else (int(w["stitch_id"]), True)
        rows.append(dict(interval=int(i), stitch_id=sid, cost=float(on.loc[sid, cost]),
                         accuracy=float(on.loc[sid, "accuracy"]), missed=missed))
    return pd.DataFrame(rows, columns=["interval", "stitch_id", "cost", "accuracy", "missed"])


def curve_area(u, accuracy, lo: float, hi: float) -> float:
    """Mean over [lo, hi] of the linear interpolation of ``accuracy`` against ``u`` (points at the same
    ``u`` averaged); [lo, hi] must lie inside the points' range. NaN for an empty range."""
    d = pd.DataFrame(dict(u=np.asarray(u, dtype=float), a=np.asarray(accuracy, dtype=float)))
    d = d.groupby("u", as_index=False)["a"].mean()
    if not hi > lo:
        return float("nan")
    if lo < d["u"].iloc[0] - 1e-12 or hi > d["u"].iloc[-1] + 1e-12:
        raise ValueError(f"range [{lo}, {hi}] lies outside the curve's [{d['u'].iloc[0]}, {d['u'].iloc[-1]}]")
    x = np.unique(np.concatenate([[lo, hi], d["u"][(d["u"] > lo) & (d["u"] < hi)]]))
    y = np.interp(x, d["u"], d["a"])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (hi - lo))


def hypervolume(u, accuracy, ref: tuple[float, float] = REFERENCE_POINT) -> float:
    """Area of the (cost, accuracy) plane that the points dominate, lower ``u`` and higher ``accuracy``
    being better, bounded by the reference point ``ref`` (points beyond it add nothing)."""
    d = pd.DataFrame(dict(u=np.asarray(u, dtype=float), a=np.asarray(accuracy, dtype=float)))
    d = d[(d["u"] < ref[0]) & (d["a"] > ref[1])]
    front = pareto_front(d, "u", "a")  # sorted by u; accuracy rises along it
    rise = np.diff(np.concatenate([[ref[1]], front["a"].to_numpy()]))
    return float(np.sum((ref[0] - front["u"].to_numpy()) * rise))


def judge_run(table: pd.DataFrame, accuracy: pd.Series, selections: dict[str, tuple[pd.DataFrame, pd.DataFrame]],
              k: int, cost: str = "macs_nohead", rank_over: list[str] | None = None) -> list[dict]:
    """Judge every deployment of one run over the same intervals, cost range and stitch set.

    ``selections`` maps a label to ``(scores, deployed)``: every stitch's score (stitch_id, score_name,
    score) and the deployment (``esta.pareto.deploy_by_score``'s rows: stitch_id, reason, dominated).
    ``accuracy`` is the test accuracy by stitch_id (NaN or absent where unmeasured), ``k`` the number of
    deployment intervals over ``cost``. ρ is taken over the stitches every selection of ``rank_over``
    (default: all) can rank. Returns one dict per selection (see the module docstring)."""
    table = table.reset_index(drop=True)
    acc = pd.Series(table["stitch_id"].map(accuracy).to_numpy(dtype=float), index=table["stitch_id"].to_numpy())
    rankable = set(acc.index[np.isfinite(acc.to_numpy())])
    for label in rank_over or list(selections):
        s = selections[label][0]
        rankable &= set(s.loc[np.isfinite(s["score"].to_numpy(dtype=float)), "stitch_id"])
    rank_ids = sorted(rankable)
    u_of = pd.Series(unit_log_cost(table[cost], table[cost]), index=table["stitch_id"].to_numpy())
    anchor_ids = table.loc[table["front"] == table["end"], "stitch_id"].tolist()
    curves = {}
    for label, (_, deployed) in selections.items():
        pts = interval_points(table, deployed, accuracy, k, cost)
        ids = list(dict.fromkeys(pts["stitch_id"].tolist() + anchor_ids))  # anchors: every score deploys them
        curves[label] = (pts, pd.DataFrame(dict(u=u_of.loc[ids].to_numpy(), a=acc.loc[ids].to_numpy())))
    lo = max(c["u"].min() for _, c in curves.values())
    hi = min(c["u"].max() for _, c in curves.values())
    rows = []
    for label, (scores, deployed) in selections.items():
        name = scores["score_name"].iloc[0]
        pts, c = curves[label]
        by_id = scores.set_index("stitch_id")["score"].astype(float)
        mine = by_id.reindex(rank_ids).to_numpy()
        truth = acc.loc[rank_ids].to_numpy()
        rows.append(dict(selection=label, score=name, rho=spearman(oriented(name, mine), truth),
                         rho_n=int(np.isfinite(mine).sum()), ranked=int(np.isfinite(by_id.to_numpy()).sum()),
                         accuracy=float(pts["accuracy"].mean()), auc=curve_area(c["u"], c["a"], lo, hi),
                         hypervolume=hypervolume(c["u"], c["a"]), deployed=len(deployed),
                         missed=int(pts["missed"].sum()), dominated=int(deployed["dominated"].sum())))
    return rows


MEASURES = ("accuracy", "auc", "hypervolume", "deployed", "ranked", "missed", "dominated", "rho_n", "wall_s")


def summarize(per_run: pd.DataFrame, reference: str = "evaluate") -> pd.DataFrame:
    """Per selection and task (``per_run``: one row per task, seed and selection, ``judge_run``'s columns
    plus task, seed, wall_s): the means over seeds, then over tasks as task "mean". ρ's mean and std are
    over the seeds (then tasks) where it is defined; ``rho_undefined`` counts the runs where it is not,
    ``positive_tasks`` the tasks whose mean ρ is defined and positive. ``gap_points`` is the ``auc``
    minus the ``reference`` selection's, in points."""
    keys = ["selection", "score", "window", "weighting"]
    d = per_run.assign(**{k: per_run[k] if k in per_run else np.nan for k in ("window", "weighting")})
    d[["window", "weighting"]] = d[["window", "weighting"]].astype(object).fillna("")
    d["rho_undefined"] = d["rho"].isna().astype(int)
    means = {m: (m, "mean") for m in MEASURES if m in d}
    per_task = d.groupby(keys + ["task"], sort=False, as_index=False).agg(
        rho=("rho", "mean"), rho_std=("rho", "std"), rho_undefined=("rho_undefined", "sum"),
        seeds=("seed", "nunique"), **means)
    overall = per_task.groupby(keys, sort=False, as_index=False).agg(
        rho=("rho", "mean"), rho_std=("rho", "std"), rho_undefined=("rho_undefined", "sum"),
        seeds=("seeds", "min"), positive_tasks=("rho", lambda r: int((r > 0).sum())), **means)
    out = pd.concat([per_task, overall.assign(task="mean")], ignore_index=True)
    ref = out[out["selection"] == reference].set_index("task")["auc"]
    out["gap_points"] = 100 * (out["auc"] - out["task"].map(ref))
    out["rho_std"] = out["rho_std"].where(out["rho"].isna(), out["rho_std"].fillna(0.0))
    return out
