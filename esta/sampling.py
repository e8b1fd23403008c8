"""Stitch importance, sampling and one-stage deployment (ESTA §3.2-3.3; spec §6) and SN-Net's
evaluate-all selection (spec §7).

Importance of the stitch sampled at a step is a SNIP-style connection sensitivity over its trainable
parameters Θ_s: ``Q(s) = mean_θ |θ · ∂L/∂θ|`` [decision: mean, not sum]. A bias-corrected moving
average keeps a global statistic per stitch: ``m_s <- β m_s + (1-β) Q(s)``, ``I_s = m_s / (1-β^n_s)``.
After a uniform warm-up, stitches are drawn with
``p = (1-ε) softmax(log(I / mean I) / τ) + ε / S`` over visited stitches (unvisited ones get ε/S).
Deployment picks, in each of K equal FLOPs intervals, the stitch of highest I_s among those visited
at least ``min_visits`` times; anchors are always deployed. No evaluation pass is needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from esta.pareto import assign_intervals

__all__ = [
    "SamplerConfig",
    "StitchSampler",
    "snip_importance",
    "select_deployed",
    "refresh_importance",
]


@dataclass
class SamplerConfig:
    """How stitches are drawn. ``kind`` is "importance" (ESTA) or "uniform" (SN-Net, ablation)."""

    kind: str = "importance"
    beta: float = 0.9
    warmup_frac: float = 0.1
    tau: float = 1.0
    eps: float = 0.1

    def __post_init__(self):
        if self.kind not in ("importance", "uniform"):
            raise ValueError(f"sampler kind must be 'importance' or 'uniform', got {self.kind!r}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"sampler beta must be in [0, 1), got {self.beta}")
        if not 0.0 <= self.warmup_frac <= 1.0:
            raise ValueError(f"sampler warmup_frac must be in [0, 1], got {self.warmup_frac}")
        if self.tau <= 0:
            raise ValueError(f"sampler tau must be > 0, got {self.tau}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"sampler eps must be in [0, 1], got {self.eps}")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def snip_importance(params: list[torch.Tensor]) -> float:
    """``mean over every scalar θ in params of |θ · ∂L/∂θ|``; a missing gradient counts as zero."""
    total = 0.0
    count = 0
    for p in params:
        count += p.numel()
        if p.grad is not None:
            total += (p.detach() * p.grad).abs().sum().item()
    if count == 0:
        return float("nan")
    return total / count


class StitchSampler:
    """Per-stitch statistics and the draw of the next stitch, with its own seeded generator."""

    def __init__(self, n_stitches: int, total_steps: int, cfg: SamplerConfig, seed: int = 0):
        if n_stitches < 1:
            raise ValueError(f"need at least one stitch, got {n_stitches}")
        self.cfg = cfg
        self.n = n_stitches
        self.total_steps = total_steps
        self.warmup_steps = int(round(cfg.warmup_frac * total_steps))
        self.m = torch.zeros(n_stitches, dtype=torch.float64)
        self.visits = torch.zeros(n_stitches, dtype=torch.long)
        self.last_step = torch.full((n_stitches,), -1, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    def importance(self) -> torch.Tensor:
        """Bias-corrected moving average I_s; NaN for stitches never visited."""
        corr = 1.0 - self.cfg.beta ** self.visits.double()
        out = self.m / corr
        out[self.visits == 0] = float("nan")
        return out

    def probs(self, step: int) -> torch.Tensor:
        """Sampling distribution at ``step``."""
        uniform = torch.full((self.n,), 1.0 / self.n, dtype=torch.float64)
        visited = self.visits > 0
        if self.cfg.kind == "uniform" or step < self.warmup_steps or not visited.any():
            return uniform
        imp = self.importance()[visited]
        if not (imp > 0).any():
            return uniform
        logits = torch.log(imp / imp.mean()) / self.cfg.tau  # I = 0 gives -inf, i.e. no share
        p = torch.zeros(self.n, dtype=torch.float64)
        p[visited] = torch.softmax(logits, 0)
        return (1.0 - self.cfg.eps) * p + self.cfg.eps * uniform

    def sample(self, step: int) -> int:
        return int(torch.multinomial(self.probs(step), 1, generator=self.generator).item())

    def update(self, stitch_id: int, q: float, step: int) -> None:
        """Record a visit of ``stitch_id`` at ``step`` with importance ``q`` (NaN: visit only)."""
        self.visits[stitch_id] += 1
        self.last_step[stitch_id] = step
        if q == q:  # not NaN
            self.m[stitch_id] = self.cfg.beta * self.m[stitch_id] + (1.0 - self.cfg.beta) * q

    def stats(self) -> pd.DataFrame:
        """One row per stitch: visits, last_step, importance."""
        return pd.DataFrame(
            dict(
                stitch_id=np.arange(self.n),
                visits=self.visits.numpy(),
                last_step=self.last_step.numpy(),
                importance=self.importance().numpy(),
            )
        )

    def state_dict(self) -> dict:
        return dict(
            m=self.m.clone(),
            visits=self.visits.clone(),
            last_step=self.last_step.clone(),
            generator=self.generator.get_state(),
        )

    def load_state_dict(self, state: dict) -> None:
        self.m.copy_(state["m"])
        self.visits.copy_(state["visits"])
        self.last_step.copy_(state["last_step"])
        self.generator.set_state(state["generator"])


def select_deployed(
    table: pd.DataFrame,
    score: pd.Series | np.ndarray,
    k: int,
    eligible: pd.Series | np.ndarray | None = None,
) -> pd.DataFrame:
    """Deploy, per FLOPs interval, the eligible stitch of highest ``score``; always the anchors.

    ``table`` is the stitch table (``stitch_id``, ``front``, ``end``, ``macs_nohead`` at least).
    ESTA passes importance with ``eligible = visits >= min_visits`` (one stage); SN-Net and the
    evaluate-all ablation pass selection-split accuracy with every stitch eligible. Returns one row
    per deployed stitch: stitch_id, interval, score, reason ("interval" or "anchor"), sorted by MACs.
    """
    t = table.reset_index(drop=True).copy()
    t["score"] = np.asarray(score, dtype=float)
    t["eligible"] = True if eligible is None else np.asarray(eligible, dtype=bool)
    t["interval"] = assign_intervals(t["macs_nohead"], k)
    cand = t[t["eligible"] & t["score"].notna()]
    best = cand.loc[cand.groupby("interval")["score"].idxmax()].assign(reason="interval")
    anchors = t[(t["front"] == t["end"]) & ~t["stitch_id"].isin(best["stitch_id"])]
    out = pd.concat([best, anchors.assign(reason="anchor")])
    cols = ["stitch_id", "interval", "score", "reason", "macs_nohead"]
    return out[cols].sort_values("macs_nohead").reset_index(drop=True)


def refresh_importance(model, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Q(s) of every stitch on one fixed batch (the optional ``importance_refresh`` of spec §6)."""
    out = np.zeros(model.net.num_stitches)
    for sid in range(model.net.num_stitches):
        model.zero_grad(set_to_none=True)
        model.loss((x, y), sid).backward()
        out[sid] = snip_importance(model.importance_params(sid))
    model.zero_grad(set_to_none=True)
    return out
