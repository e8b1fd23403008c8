"""The `grouped` sampler (spec §6): an interval uniformly, then a stitch by importance inside it."""

from __future__ import annotations

import pytest
import torch

from esta.sampling import SamplerConfig, StitchSampler

GROUPS = [0, 0, 0, 1, 1, 2]  # six stitches in three deployment intervals


def _sampler(kind="grouped", warmup_frac=0.0, eps=0.1, tau=1.0, groups=GROUPS, total=100):
    cfg = SamplerConfig(kind=kind, warmup_frac=warmup_frac, eps=eps, tau=tau)
    return StitchSampler(len(GROUPS), total, cfg, seed=0, groups=groups)


def test_grouped_needs_one_interval_per_stitch():
    with pytest.raises(ValueError, match="groups="):
        _sampler(groups=None)
    with pytest.raises(ValueError, match="one interval per stitch"):
        _sampler(groups=[0, 1])
    with pytest.raises(ValueError, match="sampler kind must be one of"):
        SamplerConfig(kind="grouping")


def test_each_interval_gets_an_equal_share_whatever_its_size_or_importance():
    s = _sampler()
    for sid, q in enumerate([1.0, 2.0, 5.0, 1e-6, 1e-5, 3.0]):
        s.update(sid, q, step=0)
    p = s.probs(50)
    g = torch.tensor(GROUPS)
    shares = [p[g == k].sum().item() for k in range(3)]
    assert shares == pytest.approx([1 / 3] * 3, abs=1e-12)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_inside_an_interval_the_importance_formula_is_restricted_to_it():
    s = _sampler(eps=0.1, tau=1.0)
    for sid, q in ((0, 1.0), (1, 2.0), (3, 4.0), (5, 7.0)):  # stitch 2 and 4 unvisited
        s.update(sid, q, step=0)
    p = s.probs(50)
    # interval 0: visited {0: 1, 1: 2}; softmax(log(I / mean I)) = I / sum I = [1/3, 2/3]; stitch 2 gets eps/3
    expect0 = [(0.9 * 1 / 3 + 0.1 / 3) / 3, (0.9 * 2 / 3 + 0.1 / 3) / 3, (0.1 / 3) / 3]
    assert p[:3].tolist() == pytest.approx(expect0, rel=1e-12)
    # interval 1: only stitch 3 visited -> 0.9 + 0.1/2; stitch 4 -> 0.1/2
    assert p[3:5].tolist() == pytest.approx([(0.9 + 0.05) / 3, 0.05 / 3], rel=1e-12)
    assert p[5].item() == pytest.approx(1 / 3, rel=1e-12)  # a lone stitch takes its interval's share


def test_warmup_draws_an_interval_then_a_stitch_uniformly():
    s = _sampler(warmup_frac=0.5, total=100)
    s.update(0, 100.0, step=0)
    p = s.probs(10)
    assert p.tolist() == pytest.approx([1 / 9] * 3 + [1 / 6] * 2 + [1 / 3], rel=1e-12)


def _run(kind: str, steps: int = 600) -> torch.Tensor:
    """Simulate training where a stitch's importance is fixed and spans five orders of magnitude."""
    q = torch.logspace(-4, 1, len(GROUPS), dtype=torch.float64)  # the large-FLOPs interval is least important
    q = q.flip(0)
    s = _sampler(kind=kind, warmup_frac=0.1, total=steps)
    for step in range(steps):
        sid = s.sample(step)
        s.update(sid, float(q[sid]), step)
    return s.visits


def test_grouped_keeps_every_interval_visited_where_global_importance_starves_some():
    glob = _run("importance")
    grouped = _run("grouped")
    g = torch.tensor(GROUPS)
    per_interval = [int(grouped[g == k].sum()) for k in range(3)]
    assert min(per_interval) > 600 / 3 * 0.8  # roughly equal: 200 draws each
    assert int(glob[g == 2].sum()) < per_interval[2] / 2  # global importance starves the last interval
    assert sum(per_interval) == 600


def test_each_anchor_is_a_deployment_slot_of_its_own():
    import pandas as pd

    from esta.pareto import deployment_slots

    # anchors 0 and 1 (ids 0, 1) sit inside the intervals of the stitches 2..5
    table = pd.DataFrame(dict(stitch_id=range(6), front=[0, 1, 0, 0, 0, 0], end=[0, 1, 1, 1, 1, 1],
                              macs_nohead=[1.0, 9.0, 1.5, 4.0, 6.0, 9.5]))
    slots = deployment_slots(table, k=3)
    assert slots.tolist() == [3, 4, 0, 1, 1, 2]
    s = StitchSampler(6, 100, SamplerConfig(kind="grouped", warmup_frac=1.0), groups=slots)
    p = s.probs(0)
    assert p[0].item() == pytest.approx(1 / 5) and p[1].item() == pytest.approx(1 / 5)  # 5 slots
