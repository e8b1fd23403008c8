"""Stitch importance, importance sampling, one-stage deployment and Pareto fronts (spec §6, §9)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import chisquare
from torch.utils._python_dispatch import TorchDispatchMode

from esta.pareto import assign_intervals, interval_edges, pareto_front, select_deployed
from esta.sampling import SamplerConfig, StitchSampler, snip_importance


def test_snip_importance_is_the_mean_abs_theta_times_grad():
    a = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    b = torch.tensor([[0.5, 4.0]], requires_grad=True)
    c = torch.tensor([7.0], requires_grad=True)  # no gradient: counts as zero, still in the mean
    a.grad = torch.tensor([0.5, 0.25, -1.0])
    b.grad = torch.tensor([[-2.0, 0.0]])
    # |1*0.5| + |-2*0.25| + |3*-1| + |0.5*-2| + |4*0| + 0 = 0.5 + 0.5 + 3 + 1 + 0 + 0 = 5, over 6
    assert snip_importance([a, b, c]) == pytest.approx(5.0 / 6.0, rel=1e-12)
    assert math.isnan(snip_importance([]))


class HostReads(TorchDispatchMode):
    """Counts the ops that copy a tensor's value to Python (``.item()``, ``float()``: a host sync
    on a GPU)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_snip_importance_stays_on_the_device_and_equals_the_formula():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(shape, generator=g, requires_grad=True) for shape in [(7,), (3, 5), (2, 2, 2), (4,)]]
    for p in params[:3]:  # the last one got no gradient
        p.grad = torch.randn(p.shape, generator=g)
    with HostReads() as reads:
        q = snip_importance(params)
    assert reads.count == 0  # no per-tensor .item(): one sync at most, by whoever reads q
    assert isinstance(q, torch.Tensor) and q.shape == () and q.dtype == torch.float64
    by_hand = sum((p.detach().double() * p.grad.double()).abs().sum().item() for p in params[:3]) / (7 + 15 + 8 + 4)
    assert q.item() == pytest.approx(by_hand, rel=1e-6)  # float32 products, float64 mean


def test_tensor_importances_give_the_same_average_as_floats():
    """The training loop hands the sampler device tensors; m must be what floats would give."""
    qs = [(1, 2.0), (2, 0.5), (1, 4.0), (3, float("nan")), (1, 1.0)]
    eager = StitchSampler(4, total_steps=10, cfg=SamplerConfig())
    lazy = StitchSampler(4, total_steps=10, cfg=SamplerConfig())
    for step, (sid, q) in enumerate(qs):
        eager.update(sid, q, step)
        lazy.update(sid, torch.tensor(q, dtype=torch.float64), step)
        if step == 2:
            lazy.update(0, 3.0, step)  # a float after pending tensors keeps the order
            eager.update(0, 3.0, step)
    assert torch.equal(lazy.m, eager.m)
    torch.testing.assert_close(lazy.importance(), eager.importance(), rtol=0, atol=0, equal_nan=True)
    assert lazy.visits.tolist() == eager.visits.tolist() == [1, 3, 1, 1]
    assert torch.equal(lazy.state_dict()["m"], eager.m)


def test_bias_corrected_average_and_visit_counts():
    s = StitchSampler(4, total_steps=100, cfg=SamplerConfig(beta=0.9))
    s.update(1, 2.0, step=0)
    s.update(1, 4.0, step=3)
    s.update(2, 1.0, step=5)
    s.update(1, 1.0, step=7)
    s.update(3, float("nan"), step=8)  # a visit without an importance value
    m1 = ((0.1 * 2.0) * 0.9 + 0.1 * 4.0) * 0.9 + 0.1 * 1.0
    expected_i1 = m1 / (1 - 0.9**3)
    imp = s.importance()
    assert imp[1].item() == pytest.approx(expected_i1, rel=1e-12)
    assert imp[2].item() == pytest.approx(1.0, rel=1e-12)  # one visit: I = Q exactly
    assert math.isnan(imp[3].item())  # visited, never measured: no estimate, not a bias-corrected 0
    assert math.isnan(imp[0].item())
    assert s.visits.tolist() == [0, 3, 1, 1]
    assert s.last_step.tolist() == [-1, 7, 5, 8]
    stats = s.stats()
    assert stats["visits"].tolist() == [0, 3, 1, 1]
    assert stats["importance"].iloc[1] == pytest.approx(expected_i1, rel=1e-12)


def _visited_sampler(tau=1.0, eps=0.1, warmup_frac=0.1, total=100):
    s = StitchSampler(4, total_steps=total, cfg=SamplerConfig(tau=tau, eps=eps, warmup_frac=warmup_frac))
    for sid, q in ((0, 1.0), (1, 2.0), (2, 5.0)):  # stitch 3 never visited
        s.update(sid, q, step=0)
    return s


def test_warmup_is_uniform_then_importance_takes_over():
    s = _visited_sampler(warmup_frac=0.25, total=40)  # warm-up = first 10 steps
    for step in (0, 5, 9):
        assert s.probs(step).tolist() == [0.25] * 4
    assert s.probs(10).tolist() != [0.25] * 4


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_probs_follow_the_formula_by_hand(tau):
    s = _visited_sampler(tau=tau, eps=0.1)
    i = np.array([1.0, 2.0, 5.0])  # one visit each: I = Q
    # softmax(log(I / mean I) / tau) = I^(1/tau) / sum I^(1/tau)
    share = i ** (1 / tau) / (i ** (1 / tau)).sum()
    expected = np.append(0.9 * share + 0.1 / 4, 0.1 / 4)
    p = s.probs(50).numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    if tau == 1.0:
        np.testing.assert_allclose(p, [0.9 / 8 + 0.025, 0.9 * 2 / 8 + 0.025, 0.9 * 5 / 8 + 0.025, 0.025])


def test_uniform_kind_ignores_importance():
    s = StitchSampler(4, 100, SamplerConfig(kind="uniform"))
    s.update(0, 100.0, 0)
    assert s.probs(99).tolist() == [0.25] * 4


def test_draws_follow_probs_chi_square():
    s = _visited_sampler(eps=0.1)
    p = s.probs(50).numpy()
    draws = np.array([s.sample(50) for _ in range(10_000)])
    observed = np.bincount(draws, minlength=4)
    result = chisquare(observed, p * len(draws))
    assert result.pvalue > 1e-3, (observed, p)
    # and the fit is discriminating: the same draws are far from uniform
    assert chisquare(observed, np.full(4, len(draws) / 4)).pvalue < 1e-10


def test_state_dict_round_trip_reproduces_the_next_draws():
    a = _visited_sampler()
    for step in range(10, 30):
        a.update(a.sample(step), 1.0 + step % 3, step)
    state = a.state_dict()
    next_a = [a.sample(40) for _ in range(50)]
    b = StitchSampler(4, 100, SamplerConfig(), seed=123)  # different seed, overwritten by the state
    b.load_state_dict(state)
    assert [b.sample(40) for _ in range(50)] == next_a
    assert torch.equal(b.m, a.m) and torch.equal(b.visits, a.visits)
    assert torch.equal(b.last_step, a.last_step)


def test_same_seed_same_draws_other_seed_other_draws():
    def draws(seed):
        s = StitchSampler(10, 100, SamplerConfig(), seed=seed)
        return [s.sample(0) for _ in range(40)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


@pytest.mark.parametrize(
    "kwargs", [dict(kind="greedy"), dict(beta=1.0), dict(tau=0.0), dict(eps=1.5), dict(warmup_frac=-0.1)]
)
def test_bad_sampler_config_names_the_value(kwargs):
    ((key, value),) = kwargs.items()
    with pytest.raises(ValueError, match=key):
        SamplerConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# One-stage deployment


def hand_table() -> pd.DataFrame:
    """Two anchors (ids 0, 1) and stitches; MACs 0..100 make K = 4 intervals of width 25."""
    rows = [
        # stitch_id, front, end, macs_nohead, score, visits
        (0, 0, 0, 0, 0.10, 9),
        (1, 1, 1, 100, 0.20, 0),  # anchor never visited: deployed anyway
        (2, 0, 1, 10, 0.90, 5),
        (3, 0, 1, 20, 0.95, 2),  # best of interval 0 but below min_visits
        (4, 0, 1, 30, 0.50, 3),
        (5, 0, 1, 40, 0.70, 4),
        (6, 0, 1, 60, np.nan, 0),  # interval 2 has no eligible stitch
        (7, 0, 1, 55, 0.99, 1),
        (8, 0, 1, 80, 0.30, 7),
        (9, 0, 1, 90, 0.80, 3),
        (10, 0, 1, 75, 0.85, 3),  # exactly on the edge 75: interval 3
    ]
    return pd.DataFrame(rows, columns=["stitch_id", "front", "end", "macs_nohead", "score", "visits"])


def test_select_deployed_on_a_hand_made_table():
    t = hand_table()
    out = select_deployed(t, t["score"], k=4, eligible=t["visits"] >= 3)
    got = list(zip(out["stitch_id"], out["interval"], out["reason"]))
    assert got == [(0, 0, "anchor"), (2, 0, "interval"), (5, 1, "interval"), (10, 3, "interval"), (1, 3, "anchor")]
    assert out["macs_nohead"].is_monotonic_increasing


def test_select_deployed_anchor_can_win_its_interval_and_is_listed_once():
    t = hand_table()
    score = t["score"].copy()
    score[0] = 0.99
    out = select_deployed(t, score, k=4)  # everything eligible (SN-Net's evaluate-all)
    assert out["stitch_id"].tolist().count(0) == 1
    assert out.set_index("stitch_id").loc[0, "reason"] == "interval"
    # with all eligible, interval 0 -> anchor 0 (0.99), 1 -> 5, 2 -> 7, 3 -> 10, plus anchor 1
    assert out["stitch_id"].tolist() == [0, 5, 7, 10, 1]


def test_pareto_front_of_a_hand_made_table():
    df = pd.DataFrame(
        dict(
            gmacs=[1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 0.5, 6.0],
            accuracy=[0.50, 0.60, 0.55, 0.58, 0.70, 0.70, 0.40, 0.71],
        ),
        index=list("abcdefgh"),
    )
    # c: same cost as b, lower accuracy; d: costs more than b, less accurate; f: same accuracy as e at
    # a higher cost. g is cheapest, so on the front despite low accuracy.
    assert pareto_front(df).index.tolist() == ["g", "a", "b", "e", "h"]


def test_assign_intervals_edges():
    macs = np.array([10.0, 12.5, 15.0, 17.5, 20.0, 11.0])
    np.testing.assert_allclose(interval_edges(macs, 4), [10, 12.5, 15, 17.5, 20])
    assert assign_intervals(macs, 4).tolist() == [0, 1, 2, 3, 3, 0]  # max -> last interval
    assert assign_intervals(macs, 1).tolist() == [0] * 6
    with pytest.raises(ValueError, match="0"):
        assign_intervals(macs, 0)


def test_a_method_without_importance_keeps_nan_for_every_visited_stitch():
    """SN-Net's full fine-tuning has no Θ_s: its training records NaN for every visit, and the
    statistics it leaves must say "no importance", not a bias-corrected 0 (issue 21, item 5)."""
    s = StitchSampler(3, total_steps=10, cfg=SamplerConfig(kind="uniform"))
    for step in range(10):
        s.update(s.sample(step), float("nan"), step)
    stats = s.stats()
    assert (stats["visits"] > 0).all() and stats["importance"].isna().all()
    state = s.state_dict()  # and it survives a resume
    t = StitchSampler(3, total_steps=10, cfg=SamplerConfig(kind="uniform"))
    t.load_state_dict(state)
    assert t.stats()["importance"].isna().all()
