"""Stitch importance and sampling (ESTA §3.2-3.3; spec §6), the statistics one-stage deployment
selects from.

Importance of the stitch sampled at a step is a SNIP-style connection sensitivity over its trainable
parameters Θ_s: ``Q(s) = mean_θ |θ · ∂L/∂θ|`` [decision: mean, not sum]. A bias-corrected moving
average keeps a global statistic per stitch: ``m_s <- β m_s + (1-β) Q(s)``, ``I_s = m_s / (1-β^n_s)``.
After a uniform warm-up, stitches are drawn with
``p = (1-ε) softmax(log(I / mean I) / τ) + ε / S`` over visited stitches (unvisited ones get ε/S).
Deployment from these statistics (``esta.pareto.select_deployed``) picks, in each of K equal FLOPs
intervals, the stitch of highest I_s among those visited at least ``min_visits`` times; anchors are
always deployed. No evaluation pass is needed.

The sampler also keeps each stitch's training loss over its visits in the last part of training
(``esta.scores.LossWindow``), the ``loss`` deployment score (``esta.scores``): a weighted sum and
weight per stitch, in its state (a resumed run continues them) and in ``stats()``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from esta.scores import LossWindow
from esta.tunable import TunableStitches

__all__ = [
    "SamplerConfig",
    "StitchSampler",
    "snip_importance",
    "refresh_importance",
]


KINDS = ("importance", "uniform", "grouped", "fixed")


@dataclass
class SamplerConfig:
    """How stitches are drawn. ``kind`` is "importance" (ESTA's global importance sampling),
    "uniform" (SN-Net) or "grouped" [decision to measure]: a deployment interval is drawn
    uniformly, then a stitch inside it by the same importance formula restricted to the interval
    (SN-Netv2's FLOPs-grouped sampling combined with ESTA's importance). "fixed" draws stitch ``stitch``
    at every step: one stitch trained alone with the whole palette's optimizer steps, the control that
    separates a stitch's own quality from its share of a palette's training (issue 31, "the dip")."""

    kind: str = "importance"
    beta: float = 0.9
    warmup_frac: float = 0.1
    tau: float = 1.0
    eps: float = 0.1
    stitch: int | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"sampler kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "fixed" and (self.stitch is None or int(self.stitch) != self.stitch or self.stitch < 0):
            raise ValueError(f"sampler kind 'fixed' needs sampler.stitch, a stitch id >= 0, got {self.stitch!r}")
        if self.kind != "fixed" and self.stitch is not None:
            raise ValueError(f"sampler.stitch ({self.stitch}) is only read by kind 'fixed', not {self.kind!r}")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"sampler beta must be in [0, 1), got {self.beta}")
        if not 0.0 <= self.warmup_frac <= 1.0:
            raise ValueError(f"sampler warmup_frac must be in [0, 1], got {self.warmup_frac}")
        if self.tau <= 0:
            raise ValueError(f"sampler tau must be > 0, got {self.tau}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"sampler eps must be in [0, 1], got {self.eps}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["stitch"] is None:  # only kind "fixed" has one: the other kinds' settings stay as they were
            del d["stitch"]
        return d


@torch.no_grad()
def snip_importance(params: list[torch.Tensor]) -> torch.Tensor:
    """``mean over every scalar θ in params of |θ · ∂L/∂θ|``; a missing gradient counts as zero.

    A 0-dim float64 tensor on the parameters' device (NaN on the CPU for no parameters), computed
    without a host sync: the per-tensor sums are reduced on the device (``torch._foreach_*``: a few
    fused kernels for the ~100 tensors of a ViT-S->B stitch), then added in float64.
    """
    count = sum(p.numel() for p in params)
    if count == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    have = [p for p in params if p.grad is not None]
    if not have:
        return torch.zeros((), dtype=torch.float64, device=params[0].device)
    products = torch._foreach_mul([p.detach() for p in have], [p.grad for p in have])
    sums = torch._foreach_norm(products, 1)  # per tensor: sum of |θ·g|
    return torch.stack(sums).double().sum() / count


class StitchSampler:
    """Per-stitch statistics and the draw of the next stitch, with its own seeded generator."""

    def __init__(self, n_stitches: int, total_steps: int, cfg: SamplerConfig, seed: int = 0,
                 groups=None, loss_window: LossWindow | None = None):
        """``groups``: the deployment slot of every stitch (``esta.pareto.deployment_slots``);
        required by, and only used by, kind "grouped". ``loss_window``: which visits the per-stitch
        loss statistic averages (default ``LossWindow()``)."""
        if n_stitches < 1:
            raise ValueError(f"need at least one stitch, got {n_stitches}")
        if cfg.kind == "grouped":
            if groups is None:
                raise ValueError("sampler kind 'grouped' needs the deployment interval of every stitch (groups=)")
            groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
            if groups.shape != (n_stitches,):
                raise ValueError(f"groups must give one interval per stitch ({n_stitches}), got shape {tuple(groups.shape)}")
        self.groups = groups if cfg.kind == "grouped" else None
        if cfg.kind == "fixed" and not 0 <= cfg.stitch < n_stitches:
            raise ValueError(f"sampler.stitch {cfg.stitch} is not a stitch id of this table (0..{n_stitches - 1})")
        # the pools drawn from, fixed for the run: one per deployment slot, or every stitch
        everyone = torch.ones(n_stitches, dtype=torch.bool)
        self._pools = [everyone] if self.groups is None else [self.groups == g for g in torch.unique(self.groups)]
        self.cfg = cfg
        self.n = n_stitches
        self.total_steps = total_steps
        self.warmup_steps = int(round(cfg.warmup_frac * total_steps))
        self._m = torch.zeros(n_stitches, dtype=torch.float64)
        # visits whose importance / loss may still be device tensors, not yet in the statistics
        self._pending: list[tuple[int, int, float | torch.Tensor, float | torch.Tensor | None]] = []
        self.visits = torch.zeros(n_stitches, dtype=torch.long)
        # visits that measured an importance: the bias correction counts these, and a stitch with
        # none (SN-Net's full fine-tuning has no Θ_s) keeps NaN instead of a corrected 0
        self._scored = torch.zeros(n_stitches, dtype=torch.long)
        self.last_step = torch.full((n_stitches,), -1, dtype=torch.long)
        self.loss_window = loss_window or LossWindow()
        self._loss_sum = torch.zeros(n_stitches, dtype=torch.float64)  # sum of weight * loss in the window
        self._loss_weight = torch.zeros(n_stitches, dtype=torch.float64)
        self._loss_visits = torch.zeros(n_stitches, dtype=torch.long)
        self.generator = torch.Generator().manual_seed(seed)

    def importance(self) -> torch.Tensor:
        """Bias-corrected moving average I_s over the visits that measured an importance; NaN for
        stitches with none (never visited, or a method without Θ_s)."""
        m = self.m  # folds in the pending importances, and with them their counts
        out = m / (1.0 - self.cfg.beta ** self._scored.double())
        out[self._scored == 0] = float("nan")
        return out

    def probs(self, step: int) -> torch.Tensor:
        """Sampling distribution at ``step``: each pool (every stitch, or for kind "grouped" each
        deployment slot that holds a stitch) gets the same share of the draws."""
        # importance is read once per draw, and not at all while the draw is uniform: reading it
        # folds in the pending device importances, a host sync the uniform phases need not wait for
        if self.cfg.kind == "fixed":
            return torch.nn.functional.one_hot(torch.tensor(self.cfg.stitch), self.n).double()
        uniform = self.cfg.kind == "uniform" or step < self.warmup_steps
        imp = None if uniform else self.importance()
        return sum(self._pool_probs(pool, imp) for pool in self._pools) / len(self._pools)

    def _pool_probs(self, pool: torch.Tensor, importance: torch.Tensor | None) -> torch.Tensor:
        """The draw restricted to the stitches in ``pool`` (a mask): uniform without ``importance``
        (the warm-up, kind "uniform"), else ``(1-ε) softmax(log(I / mean I) / τ) + ε / |pool|`` over the visited
        stitches of the pool (unvisited ones get the ε share only). Zero outside the pool."""
        size = int(pool.sum())
        uniform = pool.double() / size
        if importance is None:
            return uniform
        visited = importance.isfinite() & pool  # visited, with an importance measured
        if not visited.any():
            return uniform
        imp = importance[visited]
        if not (imp > 0).any():
            return uniform
        logits = torch.log(imp / imp.mean()) / self.cfg.tau  # I = 0 gives -inf, i.e. no share
        p = torch.zeros(self.n, dtype=torch.float64)
        p[visited] = torch.softmax(logits, 0)
        return (1.0 - self.cfg.eps) * p + self.cfg.eps * uniform

    def sample(self, step: int) -> int:
        if self.cfg.kind == "fixed":  # no draw: the generator's state is left as it is
            return int(self.cfg.stitch)
        return int(torch.multinomial(self.probs(step), 1, generator=self.generator).item())

    @property
    def m(self) -> torch.Tensor:
        """Moving averages m_s (float64, CPU), with every recorded importance applied in order."""
        self._flush()
        return self._m

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        # one host copy for all device values recorded since the last read
        dev = [v for _, _, q, loss in pending for v in (q, loss) if isinstance(v, torch.Tensor)]
        host = iter(torch.stack([v.reshape(()).double() for v in dev]).cpu().tolist() if dev else [])

        def value(v):
            return next(host) if isinstance(v, torch.Tensor) else v

        # the loss window's weight of every pending visit (0 before the window), as window_loss weighs them
        weights = self.loss_window.weights(np.array([step for _, step, _, _ in pending]), self.total_steps)
        for (sid, _, q, loss), w in zip(pending, weights.tolist()):
            q, loss = value(q), value(loss)
            self._average(sid, q)
            # a step without a finite loss (a batch whose targets are all masked) says nothing of the stitch
            if loss is not None and math.isfinite(loss) and w > 0:
                self._loss_sum[sid] += w * loss
                self._loss_weight[sid] += w
                self._loss_visits[sid] += 1

    def _average(self, stitch_id: int, q: float) -> None:
        if q == q:  # not NaN
            self._m[stitch_id] = self.cfg.beta * self._m[stitch_id] + (1.0 - self.cfg.beta) * q
            self._scored[stitch_id] += 1

    def update(self, stitch_id: int, q: float | torch.Tensor, step: int,
               loss: float | torch.Tensor | None = None) -> None:
        """Record a visit of ``stitch_id`` at ``step`` with importance ``q`` (NaN: visit only) and,
        when given, the step's training ``loss``.

        Tensors (``snip_importance``'s and the loss, on the training device) are kept as they are and
        moved into the statistics when these are next read: during a uniform phase the training loop
        never waits for the device; after it, the draw of the next stitch reads ``m`` once per step.
        """
        self.visits[stitch_id] += 1
        self.last_step[stitch_id] = step
        if isinstance(q, torch.Tensor):
            q = q.detach()
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
        self._pending.append((stitch_id, step, q, loss))

    def window_loss(self) -> torch.Tensor:
        """Weighted mean training loss of each stitch over its visits in the loss window (NaN for
        stitches without one)."""
        self._flush()
        out = self._loss_sum / self._loss_weight
        out[self._loss_weight == 0] = float("nan")
        return out

    def stats(self) -> pd.DataFrame:
        """One row per stitch: visits, last_step, importance, and the ``loss`` score (``loss``, NaN
        without a visit in the window; ``loss_visits``; ``loss_window``, ``loss_weighting``)."""
        return pd.DataFrame(
            dict(
                stitch_id=np.arange(self.n),
                visits=self.visits.numpy(),
                last_step=self.last_step.numpy(),
                importance=self.importance().numpy(),
                loss=self.window_loss().numpy(),
                loss_visits=self._loss_visits.numpy(),
                loss_window=self.loss_window.window,
                loss_weighting=self.loss_window.weighting,
            )
        )

    def state_dict(self) -> dict:
        return dict(
            m=self.m.clone(),
            scored=self._scored.clone(),
            visits=self.visits.clone(),
            last_step=self.last_step.clone(),
            loss_sum=self._loss_sum.clone(),
            loss_weight=self._loss_weight.clone(),
            loss_visits=self._loss_visits.clone(),
            generator=self.generator.get_state(),
        )

    def load_state_dict(self, state: dict) -> None:
        self._pending = []
        self._m.copy_(state["m"])
        self._scored.copy_(state["scored"])
        self.visits.copy_(state["visits"])
        self.last_step.copy_(state["last_step"])
        self._loss_sum.copy_(state["loss_sum"])
        self._loss_weight.copy_(state["loss_weight"])
        self._loss_visits.copy_(state["loss_visits"])
        self.generator.set_state(state["generator"])


def refresh_importance(model: TunableStitches, batch: tuple[torch.Tensor, ...]) -> np.ndarray:
    """Q(s) of every stitch on one fixed batch, given as the family's data set yields it (the
    optional ``importance_refresh`` of spec §6)."""
    out = []
    for sid in range(model.net.num_stitches):
        model.zero_grad(set_to_none=True)
        model.loss(batch, sid).backward()
        out.append(snip_importance(model.importance_params(sid)))
    model.zero_grad(set_to_none=True)
    return torch.stack(out).cpu().numpy()
