"""Deployment scores (spec §6): the loss window, dominated stitches, lowest-loss deployment, the
loss on fixed examples, and the tables that judge each score against accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from esta.pareto import deploy_by_score, select_deployed
from esta.sampling import SamplerConfig, StitchSampler
from esta.compare import curve_area, hypervolume, interval_points, judge_run, summarize
from esta.scores import LossWindow, dominated, gate_visits, oriented, spearman, window_loss


def test_loss_window_weights():
    w = LossWindow(0.3, "mean")
    assert w.start(100) == 70
    assert w.weights(np.array([0, 69, 70, 99]), 100).tolist() == [0, 0, 1, 1]
    r = LossWindow(0.3, "recent")
    assert r.weights(np.array([69, 70, 71, 99]), 100).tolist() == [0, 1, 2, 30]
    assert LossWindow(1.0).start(50) == 0
    for bad in (dict(window=0.0), dict(window=1.5), dict(weighting="median")):
        with pytest.raises(ValueError, match="deploy.loss"):
            LossWindow(**bad)


def test_window_loss_by_hand():
    history = pd.DataFrame(dict(step=range(10), stitch_id=[0, 1, 0, 1, 2, 0, 1, 0, 1, 0],
                                loss=[9.0, 9.0, 9.0, 9.0, 9.0, 4.0, 3.0, 2.0, 1.0, 0.0]))
    mean = window_loss(history, 4, 10, LossWindow(0.5, "mean")).set_index("stitch_id")
    # steps 5..9: stitch 0 at 5, 7, 9 (4, 2, 0), stitch 1 at 6, 8 (3, 1); stitch 2 only before; 3 never
    assert mean.loc[0, "loss"] == pytest.approx(2.0) and mean.loc[1, "loss"] == pytest.approx(2.0)
    assert np.isnan(mean.loc[2, "loss"]) and np.isnan(mean.loc[3, "loss"])
    assert mean["loss_visits"].tolist() == [3, 2, 0, 0]
    recent = window_loss(history, 4, 10, LossWindow(0.5, "recent")).set_index("stitch_id")
    assert recent.loc[0, "loss"] == pytest.approx((1 * 4 + 3 * 2 + 5 * 0) / 9)  # weights 1, 3, 5
    # a step without a finite loss (every target masked) is not a visit of the statistic, here or in the sampler
    history.loc[7, "loss"] = np.nan
    masked = window_loss(history, 4, 10, LossWindow(0.5, "mean")).set_index("stitch_id")
    assert masked.loc[0, "loss"] == pytest.approx(2.0) and masked.loc[0, "loss_visits"] == 2
    s = StitchSampler(4, 10, SamplerConfig(kind="uniform"), loss_window=LossWindow(0.5, "mean"))
    for row in history.itertuples():
        s.update(row.stitch_id, float("nan"), row.step, loss=torch.tensor(row.loss))
    np.testing.assert_allclose(s.stats()["loss"], masked["loss"].to_numpy())
    assert s.stats()["loss_visits"].tolist() == masked["loss_visits"].tolist()


def test_sampler_accumulates_the_window_loss_of_device_tensors_and_resumes():
    """The training loop hands the sampler loss tensors; its statistic equals the history's, and a
    sampler restored from a state dict mid-run ends where an uninterrupted one does."""
    win = LossWindow(0.4, "recent")
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(30, generator=g)

    def run(sampler, steps, rows):
        for step in steps:
            sid = sampler.sample(step)
            sampler.update(sid, torch.tensor(0.1 + sid), step, loss=losses[step].clone())
            rows.append(dict(step=step, stitch_id=sid, loss=float(losses[step])))

    rows = []
    ref = StitchSampler(5, 30, SamplerConfig(kind="uniform"), seed=1, loss_window=win)
    run(ref, range(30), rows)
    expect = window_loss(pd.DataFrame(rows), 5, 30, win)
    stats = ref.stats()
    np.testing.assert_allclose(stats["loss"], expect["loss"], rtol=1e-12)
    assert (stats["loss_visits"] == expect["loss_visits"]).all() and stats["loss_visits"].sum() == 12
    assert set(stats["loss_weighting"]) == {"recent"} and set(stats["loss_window"]) == {0.4}

    first = StitchSampler(5, 30, SamplerConfig(kind="uniform"), seed=1, loss_window=win)
    run(first, range(22), [])  # interrupted inside the window
    second = StitchSampler(5, 30, SamplerConfig(kind="uniform"), seed=1, loss_window=win)
    second.load_state_dict(first.state_dict())
    run(second, range(22, 30), [])
    torch.testing.assert_close(second.window_loss(), ref.window_loss(), equal_nan=True, rtol=0, atol=0)


def test_dominated_deployed_stitches():
    cost = [1.0, 2.0, 3.0, 4.0, 5.0]
    score = [0.5, 0.4, 0.6, np.nan, 0.6]
    # 2.0 is beaten by the cheaper 1.0; 5.0 ties the cheaper 3.0; a NaN neither is dominated nor dominates
    assert dominated(cost, score).tolist() == [False, True, False, False, True]


def test_select_deployed_lowest_loss_and_dominated_column():
    t = pd.DataFrame(dict(stitch_id=range(6), front=[0, 1, 0, 0, 0, 0], end=[0, 1, 1, 1, 1, 1],
                          macs_nohead=[0.0, 100.0, 10.0, 20.0, 60.0, 70.0]))
    loss = np.array([2.0, 0.5, 1.5, 1.0, 1.2, 0.9])
    out = select_deployed(t, loss, k=2, lower_is_better=True)
    # interval 0 = [0, 50): 0, 2, 3 -> 3 (lowest); interval 1: 1, 4, 5 -> 1 (lowest loss, the anchor)
    assert out["stitch_id"].tolist() == [0, 3, 1]
    assert out["reason"].tolist() == ["anchor", "interval", "interval"]
    assert out["dominated"].tolist() == [False, False, False]
    highest = select_deployed(t, loss, k=2)  # the same numbers as a higher-is-better score
    assert highest["stitch_id"].tolist() == [0, 4, 1]
    # 1.2 at 60 MACs is dominated by the cheaper anchor's 2.0; the anchor 1 (0.5) at 100 too
    assert highest["dominated"].tolist() == [False, True, True]


def test_oriented_and_spearman():
    assert oriented("loss", [1.0, 2.0]).tolist() == [-1.0, -2.0]
    assert oriented("importance", [1.0, 2.0]).tolist() == [1.0, 2.0]
    assert spearman([1, 2, 3, np.nan], [0.1, 0.2, 0.3, 0.0]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [0.3, 0.2, 0.1]) == pytest.approx(-1.0)
    # undefined (a constant side, fewer than 3 pairs) is NaN, never a 0 that a mean would average in
    assert np.isnan(spearman([1, 1, 1], [0.1, 0.2, 0.3])) and np.isnan(spearman([1, 2, np.nan], [1, 2, 3]))


# A hand-made run: costs 1..16 (log2 cost / 4 = u: 0, 1, 0.25, 0.5, 0.75, 0.75), 3 intervals on linear cost
# (edges 1, 6, 11, 16): interval 0 = {0, 2, 3}, interval 1 = {4, 5}, interval 2 = {1}; stitches 0 and 1 are anchors.
TABLE = pd.DataFrame(dict(stitch_id=range(6), front=[0, 1, 0, 0, 0, 0], end=[0, 1, 1, 1, 1, 1],
                          macs_nohead=[1.0, 16.0, 2.0, 4.0, 8.0, 8.0]))
ACC = pd.Series([0.5, 0.9, 0.4, 0.7, 0.6, 0.3], index=range(6))
LOSS = np.array([0.5, 0.1, 0.45, np.nan, 0.4, 0.2])
VISITS = np.array([9, 9, 9, 0, 1, 1])  # stitches 4 and 5 too rarely visited: the loss cannot fill interval 1


def _hand_run():
    loss = deploy_by_score(TABLE, "loss", LOSS, 3, visits=VISITS, min_visits=3)
    oracle = deploy_by_score(TABLE, "oracle", TABLE["stitch_id"].map(ACC).to_numpy(), 3)
    return {"loss": loss[::-1], "oracle": oracle[::-1]}


def test_a_missed_interval_is_costed_as_its_worst_stitch():
    sel = _hand_run()
    assert sel["loss"][1]["stitch_id"].tolist() == [0, 2, 1]  # interval 1 left empty
    pts = interval_points(TABLE, sel["loss"][1], ACC, 3)
    assert pts["interval"].tolist() == [0, 1, 2] and pts["stitch_id"].tolist() == [2, 5, 1]
    assert pts["missed"].tolist() == [False, True, False]  # the miss is stitch 5, the worst (0.3) of interval 1
    # a miss counts exactly as deploying the interval's worst stitch would: skipping it gains nothing
    worst = sel["loss"][1].copy()
    worst.loc[len(worst)] = dict(stitch_id=5, interval=1, score=0.2, reason="interval", dominated=True,
                                 macs_nohead=8.0, score_name="loss", visits=1)
    filled = interval_points(TABLE, worst, ACC, 3)
    assert filled["accuracy"].tolist() == pts["accuracy"].tolist() and not filled["missed"].any()
    # an anchor always deployed inside an otherwise empty interval fills it
    only_anchors = sel["loss"][1][sel["loss"][1]["reason"] == "anchor"]
    assert interval_points(TABLE, only_anchors, ACC, 3)["missed"].tolist() == [False, True, True]


def test_curve_area_and_hypervolume_by_hand():
    # the oracle's curve: anchors and interval picks at u 0, 0.5, 0.75, 1 with accuracy 0.5, 0.7, 0.6, 0.9
    u, a = [0.0, 0.5, 0.75, 1.0], [0.5, 0.7, 0.6, 0.9]
    assert curve_area(u, a, 0.0, 1.0) == pytest.approx(0.5 * 0.6 + 0.25 * 0.65 + 0.25 * 0.75)  # 0.65
    assert curve_area([0.0, 0.5, 1.0], [0.0, 1.0, 0.0], 0.25, 0.75) == pytest.approx(0.75)
    # (0.75, 0.6) is dominated by (0.5, 0.7); (1, 0.9) lies on the reference cost and adds nothing
    assert hypervolume(u, a) == pytest.approx(1.0 * 0.5 + 0.5 * 0.2)
    with pytest.raises(ValueError, match="outside"):
        curve_area(u, a, 0.0, 1.5)


def test_judge_run_compares_every_score_over_the_same_intervals_and_stitches():
    rows = {r["selection"]: r for r in judge_run(TABLE, ACC, _hand_run(), 3)}
    oracle, loss = rows["oracle"], rows["loss"]
    # intervals: oracle 3, 4, 1 (0.7, 0.6, 0.9); loss 2, miss -> 5, 1 (0.4, 0.3, 0.9)
    assert oracle["accuracy"] == pytest.approx(2.2 / 3) and loss["accuracy"] == pytest.approx(1.6 / 3)
    assert (oracle["missed"], loss["missed"]) == (0, 1)
    assert (oracle["deployed"], loss["deployed"]) == (4, 3) and (oracle["ranked"], loss["ranked"]) == (6, 5)
    assert oracle["auc"] == pytest.approx(0.65) and oracle["hypervolume"] == pytest.approx(0.6)
    # loss curve: u 0, 0.25, 0.75, 1 at 0.5, 0.4, 0.3, 0.9
    assert loss["auc"] == pytest.approx(0.25 * 0.45 + 0.5 * 0.35 + 0.25 * 0.6)
    assert loss["hypervolume"] == pytest.approx(0.5)
    # rho over the stitches both can rank (not stitch 3, which has no loss): {0, 1, 2, 4, 5}, n = 5; the loss
    # ranks them 0, 2, 4, 5, 1 (worst first), accuracy 5, 2, 0, 4, 1: d^2 = 4 + 0 + 0 + 1 + 9 = 14
    assert loss["rho"] == pytest.approx(1 - 6 * 14 / (5 * 24)) and loss["rho_n"] == oracle["rho_n"] == 5
    assert oracle["rho"] == pytest.approx(1.0)
    # over the same intervals no score beats the oracle, which deploys each interval's best
    assert loss["accuracy"] <= oracle["accuracy"]


def test_summarize_leaves_undefined_rho_out_and_takes_the_gap_in_area():
    rows = []
    for task, base in (("a", 0.5), ("b", 0.7)):
        for seed in (0, 1):
            rows.append(dict(task=task, seed=seed, selection="evaluate", score="evaluate", rho=0.5, accuracy=base,
                             auc=base, hypervolume=base, deployed=4, ranked=6, missed=0, rho_n=6, wall_s=2.0,
                             dominated=0))
            # task b, seed 1: rho undefined (NaN), not 0
            rho = np.nan if (task, seed) == ("b", 1) else (-0.2 if task == "b" else 0.1 * (seed + 1))
            rows.append(dict(task=task, seed=seed, selection="loss", score="loss", rho=rho, accuracy=base - 0.01,
                             auc=base - 0.02, hypervolume=base, deployed=3, ranked=5, missed=1, rho_n=5, wall_s=0.0,
                             dominated=1))
    s = summarize(pd.DataFrame(rows)).set_index(["selection", "task"])
    assert s.loc[("loss", "a"), "rho"] == pytest.approx(0.15)
    assert s.loc[("loss", "b"), "rho"] == pytest.approx(-0.2) and s.loc[("loss", "b"), "rho_undefined"] == 1
    assert s.loc[("loss", "mean"), "rho"] == pytest.approx((0.15 - 0.2) / 2)
    assert s.loc[("loss", "mean"), "rho_undefined"] == 1 and s.loc[("loss", "mean"), "positive_tasks"] == 1
    assert s.loc[("loss", "mean"), "gap_points"] == pytest.approx(-2.0)  # the area, not the mean accuracy
    assert s.loc[("loss", "mean"), "missed"] == 1 and s.loc[("loss", "mean"), "deployed"] == 3
    assert s.loc[("evaluate", "mean"), "gap_points"] == 0.0


def test_the_loss_score_is_gated_on_its_window_visits():
    stats = pd.DataFrame(dict(visits=[10, 10], loss_visits=[1, 5], importance=[0.1, 0.2], loss=[0.3, 0.4]))
    assert gate_visits("loss", stats).tolist() == [1, 5]
    assert gate_visits("importance", stats).tolist() == [10, 10]
    with pytest.raises(ValueError, match="loss_visits"):
        gate_visits("loss", stats.drop(columns="loss_visits"))


@pytest.mark.parametrize("mode", ["pst", "full"])
def test_stitch_losses_equal_each_stitch_cross_entropy(mode):
    """loss_batch: one forward per stitch in eval mode (prefixes shared where parameters are, SN-Net)
    gives every stitch's own mean cross-entropy."""
    from conftest import NUM_CLASSES, make_images, trained_like

    from esta.vit.evaluate import stitch_losses

    model = trained_like(mode)
    x = make_images(10)
    y = torch.arange(10) % NUM_CLASSES
    got = stitch_losses(model, x, y, batch_size=4)
    assert model.training  # left as it was
    model.eval()
    with torch.no_grad():
        for sid in range(model.net.num_stitches):
            assert got[sid] == pytest.approx(F.cross_entropy(model(x, sid), y).item(), rel=1e-5)
    assert len(set(np.round(list(got.values()), 6))) > 1


def test_deploy_by_score_orients_and_gates_visit_statistics():
    t = pd.DataFrame(dict(stitch_id=range(6), front=[0, 1, 0, 0, 0, 0], end=[0, 1, 1, 1, 1, 1],
                          macs_nohead=[0.0, 100.0, 10.0, 20.0, 60.0, 70.0]))
    loss = np.array([2.0, 0.5, 1.5, 1.0, 1.2, 0.9])
    visits = np.array([9, 9, 9, 1, 9, 9])
    # stitch 3 has the lowest loss of interval 0 but too few visits for a statistic of visits
    deployed, scores = deploy_by_score(t, "loss", loss, 2, visits=visits, min_visits=3)
    assert deployed["stitch_id"].tolist() == [0, 2, 1] and set(deployed["score_name"]) == {"loss"}
    assert deployed["visits"].tolist() == [9, 9, 9]
    assert scores["eligible"].tolist() == [True, True, True, False, True, True] and len(scores) == 6
    # a measured score (every stitch measured directly) ignores visits
    deployed, scores = deploy_by_score(t, "loss_batch", loss, 2, visits=visits, min_visits=3)
    assert deployed["stitch_id"].tolist() == [0, 3, 1] and scores["eligible"].all()
    with pytest.raises(ValueError, match="statistic of visits"):
        deploy_by_score(t, "importance", loss, 2)
