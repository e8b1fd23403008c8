"""The elastic policy of a served palette (spec §12; issue 34; SN-Net §1: one stitchable family "adapts to
dynamic resource constraints at run time").

For every batch the server is about to run, ``elastic_choice`` picks the most accurate deployed stitch
whose *predicted* time fits the service-level objective: the batch's queue wait (how long its oldest
request has waited already) plus the stitch's measured latency at that batch size
(``latency_at``: the palette's profile, ``latency_ms_b1`` / ``latency_ms_b32`` of its table or any
measured batch sizes in long form, interpolated linearly between them and extrapolated per image beyond
the largest). A request's own budget narrows the candidates first (``max_gmacs``; ``max_latency_ms``
both as a batch-1 budget, as ``esta.palette.choose`` reads it, and as that request's own deadline);
with no objective at all the most accurate deployed stitch is served. When no candidate fits, the
fastest candidate is served and the answer says the objective was missed.

Pure functions of a table (pandas): no model, no family, no clock; ``esta.serve`` calls them per
batch and the tests call them alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from esta.palette import PaletteError, choose

__all__ = ["Choice", "latency_profile", "latency_at", "candidates", "elastic_choice"]


@dataclass(frozen=True)
class Choice:
    """The stitch a batch runs: its id, the predicted time (queue wait + latency at the batch size,
    ms), and whether that fits the deadline the policy had (``fits`` is true where there was none)."""

    stitch_id: int
    predicted_ms: float
    deadline_ms: float | None
    fits: bool


def latency_profile(table: pd.DataFrame) -> pd.DataFrame:
    """The measured latency of a palette table in long form (stitch_id, batch, median_ms): its
    ``latency_ms_b<N>`` columns, rows with a value only."""
    rows = []
    for col in table.columns:
        if col.startswith("latency_ms_b") and col[len("latency_ms_b"):].isdigit():
            b = int(col[len("latency_ms_b"):])
            part = table[["stitch_id", col]].dropna()
            rows += [dict(stitch_id=int(s), batch=b, median_ms=float(v)) for s, v in zip(part["stitch_id"], part[col])]
    return pd.DataFrame(rows, columns=["stitch_id", "batch", "median_ms"])


def latency_at(profile: pd.DataFrame, stitch_id: int, batch: int) -> float:
    """Predicted latency (ms) of ``stitch_id`` at ``batch``: the measured value where the profile has
    that batch size, linear between the two measured sizes around it, and beyond the largest (or below
    the smallest) the nearest segment's per-image slope (a single measured size: proportional to the
    batch). NaN where the stitch was not measured."""
    rows = profile[profile["stitch_id"] == stitch_id].sort_values("batch")
    if rows.empty:
        return math.nan
    bs, ms = rows["batch"].to_numpy(dtype=float), rows["median_ms"].to_numpy(dtype=float)
    if len(bs) == 1:
        return float(ms[0] * batch / bs[0])
    i = min(max(int((bs < batch).sum()), 1), len(bs) - 1)  # the segment [i-1, i] around (or nearest to) batch
    slope = (ms[i] - ms[i - 1]) / (bs[i] - bs[i - 1])
    return float(max(ms[i - 1] + slope * (batch - bs[i - 1]), 0.0))


def candidates(table: pd.DataFrame, max_gmacs: float | None = None, max_latency_ms: float | None = None,
               max_params: float | None = None) -> pd.DataFrame:
    """The deployed stitches a request may be served by: within its GMACs, batch-1 latency and
    parameter budgets. A budget below every deployed stitch is ``esta.palette.choose``'s error naming
    the cheapest."""
    choose(table, max_gmacs=max_gmacs, max_latency_ms=max_latency_ms, max_params=max_params)  # the one clear error
    cand = table[table["deployed"].astype(bool)]
    for value, col in ((max_gmacs, "gmacs"), (max_latency_ms, "latency_ms_b1"), (max_params, "params")):
        if value is not None:
            cand = cand[cand[col] <= value]
    return cand


def _by_accuracy(cand: pd.DataFrame) -> pd.DataFrame:
    """Candidates, most accurate first (``choose``'s order: measured accuracy, then score, then cost)."""
    measured = cand[cand["accuracy"].notna()]
    cand = measured if len(measured) else cand
    score = cand["score"].astype(float).fillna(float("-inf"))
    return cand.assign(_score=score).sort_values(["accuracy", "_score", "gmacs", "stitch_id"], ascending=False,
                                                 na_position="last")


def elastic_choice(table: pd.DataFrame, batch: int, queue_wait_ms: float = 0.0, slo_ms: float | None = None,
                   max_gmacs: float | None = None, max_latency_ms: float | None = None,
                   max_params: float | None = None, profile: pd.DataFrame | None = None) -> Choice:
    """The stitch a batch of ``batch`` inputs runs after waiting ``queue_wait_ms``: the most accurate
    candidate (``candidates``) whose ``queue_wait_ms + latency_at(batch)`` is within the deadline --
    ``slo_ms`` narrowed by the request's own ``max_latency_ms`` -- else the fastest candidate at this
    batch size (``fits`` false). No deadline: the most accurate candidate. ``profile``: measured
    latency in long form (default: the table's own columns, ``latency_profile``)."""
    if batch < 1:
        raise ValueError(f"batch {batch}: a batch holds at least one input")
    cand = _by_accuracy(candidates(table, max_gmacs, max_latency_ms, max_params))
    profile = latency_profile(table) if profile is None else profile
    deadlines = [d for d in (slo_ms, max_latency_ms) if d is not None]
    deadline = min(deadlines) if deadlines else None
    predicted = {int(s): queue_wait_ms + latency_at(profile, int(s), batch) for s in cand["stitch_id"]}
    if deadline is None:
        best = int(cand.iloc[0]["stitch_id"])
        return Choice(best, predicted[best], None, True)
    known = {s: t for s, t in predicted.items() if not math.isnan(t)}
    if not known:
        raise PaletteError("an SLO needs measured latency: the palette's deployed stitches have none "
                           "(python -m esta profile measures them)")
    for sid in map(int, cand["stitch_id"]):
        if sid in known and known[sid] <= deadline:
            return Choice(sid, known[sid], deadline, True)
    fastest = min(known, key=known.get)
    return Choice(fastest, known[fastest], deadline, False)
