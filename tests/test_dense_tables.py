"""The dense experiment's tables (esta.vit.seg_results) on hand-made runs: means over seeds, rho(GMACs,
mIoU) per run, and deployment by a score through esta.pareto."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from esta.vit.seg_results import deploy, pareto_dense, summary


def runs_table():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1)):
        # esta: mIoU rises with GMACs (rho 1); snnet: falls (rho -1)
        for sid, (gmacs, up) in enumerate(((0.1, 0.2), (0.2, 0.3), (0.4, 0.5))):
            rows.append(dict(task="shapes", method="esta", seed=seed, stitch_id=sid, front=0 if sid == 1 else sid,
                             end=1 if sid == 1 else sid, j=0, k=0, gmacs=gmacs, test_miou=up + shift,
                             test_pixel_acc=0.9, trainable_params=100))
            rows.append(dict(task="shapes", method="snnet", seed=seed, stitch_id=sid, front=0 if sid == 1 else sid,
                             end=1 if sid == 1 else sid, j=0, k=0, gmacs=gmacs, test_miou=0.6 - up + shift,
                             test_pixel_acc=0.9, trainable_params=1000))
    return pd.DataFrame(rows)


def test_pareto_dense_means_over_seeds_and_marks_anchors():
    p = pareto_dense(runs_table())
    row = p[(p.method == "esta") & (p.stitch_id == 2)].iloc[0]
    assert row["miou"] == pytest.approx(0.55) and row["miou_std"] == pytest.approx(math.sqrt(0.005))
    assert row["seeds"] == 2 and row["is_anchor"]
    assert not p[(p.stitch_id == 1)]["is_anchor"].any()


def test_summary_rho_per_run_and_anchor_rows():
    deployed = runs_table()
    runs = pd.DataFrame([dict(task="shapes", method=m, seed=s, trainable_params=t, steps=10, wall_s=w)
                         for m, t, w in (("esta", 100, 5.0), ("snnet", 1000, 20.0)) for s in (0, 1)])
    anchors = pd.DataFrame([dict(task="shapes", seed=s, anchor=a, test_miou=0.3 + 0.1 * a, wall_s=1.0,
                                 trainable_params=10 * (a + 1)) for s in (0, 1) for a in (0, 1)])
    s = summary(deployed, runs, anchors).set_index("method")
    assert s.loc["esta", "rho"] == pytest.approx(1.0) and s.loc["snnet", "rho"] == pytest.approx(-1.0)
    assert s.loc["esta", "mean_miou"] == pytest.approx((0.2 + 0.3 + 0.5) / 3 + 0.05)
    assert s.loc["snnet", "train_wall_s"] == 20.0 and s.loc["esta", "deployed"] == 3
    assert s.loc["anchor1 alone", "mean_miou"] == pytest.approx(0.4)


def test_deploy_keeps_anchors_and_picks_the_best_score_per_interval():
    table = pd.DataFrame(dict(stitch_id=[0, 1, 2, 3], front=[0, 1, 0, 0], end=[0, 1, 1, 1], j=[-1, -1, 0, 1],
                              k=[-1, -1, 0, 1], macs_nohead=[10, 100, 20, 21], gmacs=[0.01, 0.1, 0.02, 0.021]))
    # two intervals: the stitches share the cheap one with the small anchor
    d = deploy(table, "evaluate", [0.1, 0.9, 0.3, 0.5], intervals=2)
    assert {0, 1} <= set(d["stitch_id"])  # anchors always
    assert 3 in set(d["stitch_id"]) and 2 not in set(d["stitch_id"])  # the better of the two stitches
    d = deploy(table, "loss_batch", [0.9, 0.1, 0.3, 0.5], intervals=2)  # a loss: lowest wins
    assert 2 in set(d["stitch_id"]) and 3 not in set(d["stitch_id"])
