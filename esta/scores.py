"""Deployment scores: which stitch of a cost interval one-stage deployment keeps (ESTA §3.3; spec §6,
"What the importance score measures").

Deployment keeps, per cost interval, the stitch with the best score (``esta.pareto.select_deployed``).
The scores (``deploy.score``):

- ``importance``: the paper's SNIP-style I_s, a moving average of ``mean |θ·∂L/∂θ|`` over the stitch's
  visits, highest deployed. A cross-entropy gradient grows with the error, so a large I_s marks a
  stitch that is *less* converged; it is kept because it is the paper's (``config/paper.yaml``).
- ``loss``: the stitch's training loss, averaged over its visits in the last ``window`` of the steps
  (``LossWindow``), lowest deployed. The sampler accumulates it during training: no extra pass.
  **[decision: window 0.5, weighting "recent", the best of the grid ``LOSS_GRID`` that the selection
  ablation recomputes from the per-step history (embedded default, 5 tasks x 3 seeds)]**
- ``loss_batch``: the loss on one fixed set of training examples after training, forward only,
  lowest deployed (every stitch sees the same examples at the same final weights).
- ``evaluate``: accuracy on the selection split, highest deployed (SN-Net's `deploy`, the reference;
  needs a held-out split and an evaluation pass).
- ``oracle`` (analyses only): test accuracy, the ceiling of any selector.

``importance`` and ``loss`` are statistics of visits, so deployment takes only stitches with at least
``min_visits`` of the visits that produced the statistic (``gate_visits``: all visits for importance, the
visits inside the window for loss); ``loss_batch`` and ``evaluate`` measure every stitch directly.
How the scores are judged against each other is ``esta.compare``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["SCORES", "LOWER_IS_BETTER", "VISIT_SCORES", "GATE_VISITS", "LOSS_GRID", "LossWindow", "window_loss",
           "gate_visits",
           "oriented", "dominated", "spearman"]

SCORES = ("importance", "loss", "loss_batch", "evaluate")
LOWER_IS_BETTER = frozenset({"loss", "loss_batch"})
VISIT_SCORES = frozenset({"importance", "loss"})  # statistics of visits: deploy needs min_visits
# the visits that produced each such statistic (columns of the sampler's stats): importance averages all
# of a stitch's visits, the loss only those inside its window
GATE_VISITS = {"importance": "visits", "loss": "loss_visits"}
WEIGHTINGS = ("mean", "recent")
# the (window, weighting) pairs the selection ablation compares, computed from the per-step history
LOSS_GRID = tuple((w, h) for w in (0.1, 0.3, 0.5, 1.0) for h in WEIGHTINGS)


@dataclass(frozen=True)
class LossWindow:
    """Which visits the ``loss`` score averages: those in the last ``window`` of the ``total`` steps,
    each with weight 1 (``mean``) or growing linearly with its step inside the window (``recent``:
    the first step of the window weighs 1, the last one the window's length)."""

    window: float = 0.5
    weighting: str = "recent"

    def __post_init__(self):
        if not 0.0 < self.window <= 1.0:
            raise ValueError(f"deploy.loss.window must be in (0, 1], got {self.window}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"deploy.loss.weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")

    def start(self, total_steps: int) -> int:
        """First step (0-based) inside the window."""
        return min(total_steps - 1, int(round((1.0 - self.window) * total_steps)))

    def weights(self, steps: np.ndarray, total_steps: int) -> np.ndarray:
        """Weight of a visit at each of ``steps``: 0 before the window."""
        steps = np.asarray(steps, dtype=np.int64)
        start = self.start(total_steps)
        inside = steps >= start
        w = np.ones(steps.shape) if self.weighting == "mean" else (steps - start + 1).astype(float)
        return np.where(inside, w, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)


def window_loss(history: pd.DataFrame, n_stitches: int, total_steps: int, window: LossWindow) -> pd.DataFrame:
    """Per stitch 0..n_stitches-1, the ``loss`` score from a run's per-step history (``step``,
    ``stitch_id``, ``loss``): the weighted mean over its visits in the window with a finite loss
    (``loss``, NaN without one) and the number of those visits (``loss_visits``). The sampler accumulates the same numbers
    during training; this form lets the ablation try other windows without training again."""
    loss = history["loss"].to_numpy(dtype=float)
    finite = np.isfinite(loss)  # a step without a finite loss (all targets masked) says nothing of the stitch
    w = np.where(finite, window.weights(history["step"].to_numpy(), total_steps), 0.0)
    d = pd.DataFrame(dict(stitch_id=history["stitch_id"].to_numpy(), w=w, wl=w * np.where(finite, loss, 0.0),
                          n=(w > 0).astype(int)))
    g = d.groupby("stitch_id")[["w", "wl", "n"]].sum().reindex(range(n_stitches), fill_value=0)
    loss = (g["wl"] / g["w"]).where(g["w"] > 0)
    return pd.DataFrame(dict(stitch_id=np.arange(n_stitches), loss=loss.to_numpy(), loss_visits=g["n"].to_numpy()))


def gate_visits(score: str, stats: pd.DataFrame) -> np.ndarray:
    """The visits that gate deployment by ``score`` (``stats``: the sampler's or ``window_loss``'s columns,
    rows in the stitch table's order): ``visits`` for importance, ``loss_visits`` for the loss, whose
    statistic is the mean over the visits inside its window only; total visits for a measured score
    (not gated)."""
    column = GATE_VISITS.get(score, "visits")
    if column not in stats:
        raise ValueError(f"score {score!r} is gated on {column!r}, which the statistics lack "
                         f"(columns: {list(stats.columns)})")
    return stats[column].to_numpy()


def oriented(score: str, values) -> np.ndarray:
    """``values`` of score ``score`` as "higher is better" (losses negated), NaN kept."""
    v = np.asarray(values, dtype=float)
    return -v if score in LOWER_IS_BETTER else v


def dominated(cost, score) -> np.ndarray:
    """For deployed stitches with ``cost`` and an oriented ``score`` (higher is better): True where a
    cheaper one scores at least as well. A stitch without a score (NaN) is neither dominated nor
    dominates."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    out = np.zeros(len(cost), dtype=bool)
    for i in range(len(cost)):
        if np.isnan(score[i]):
            continue
        cheaper = (cost < cost[i]) & ~np.isnan(score)
        out[i] = bool((score[cheaper] >= score[i]).any())
    return out


def spearman(a, b) -> float:
    """Spearman's rho over the pairs where both are finite; NaN (undefined, never 0) when fewer than
    3 pairs or either side is constant (no ranking to compare)."""
    from scipy.stats import spearmanr  # imported late: most table jobs never need scipy

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or np.unique(a).size < 2 or np.unique(b).size < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)
