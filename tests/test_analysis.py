"""Analyses and tables of spec §9-§10: gradient interference, importance vs accuracy, stored
parameters, the selection ablation, accuracy tables, and training snapshots."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, make_anchors, make_images
from torch.utils.data import TensorDataset

from esta.vit.tuning import TuningConfig, make_tunable
from esta.analysis import (gradient_cosines, lora_gradients, selection_ablation,
                           snapshot_steps, stored_params)
from esta.pareto import accuracy_by_group, accuracy_by_task, deployed_curves
from esta.sampling import SamplerConfig, StitchSampler
from esta.vit.stitch import StitchedViT, ls_init
from esta.train import TrainConfig, train


def trained(stitch_biases=True, steps=6, seed=0):
    net = StitchedViT(make_anchors(seed=seed))
    ls_init(net, make_images(16, seed=7))
    model = make_tunable(net, TuningConfig(rank=2, stitch_biases=stitch_biases))
    data = TensorDataset(make_images(16, seed=5), torch.arange(16) % NUM_CLASSES)
    cfg = TrainConfig(epochs=steps / 2, batch_size=8, lr=5e-2, warmup_epochs=0)
    sampler = StitchSampler(net.num_stitches, cfg.total_steps(16), SamplerConfig(kind="uniform"), seed=seed)
    result = train(model, data, cfg, sampler, progress=False, snapshot_at=[2, 6])
    return model, result, data


@pytest.fixture(scope="module")
def pst():
    return trained()


def batch(data):
    return data.tensors[0][:8], data.tensors[1][:8]


# ---- gradient interference -------------------------------------------------------------------

def test_lora_gradients_are_the_autograd_gradients_of_the_stitch(pst):
    model, _, data = pst
    x, y = batch(data)
    sid = 7
    grads = lora_gradients(model, (x, y), sid)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, sid), y).backward()
    for name, p in model.net.named_parameters():
        if "lora_" in name and model.net.on_path(name, sid):
            module = name.split(".lora_")[0]
            assert module in grads
    # one module by hand: A then B, flattened
    module = next(iter(grads))
    a = dict(model.net.named_parameters())[f"{module}.lora_A.default.weight"]
    b = dict(model.net.named_parameters())[f"{module}.lora_B.default.weight"]
    torch.testing.assert_close(grads[module], torch.cat([a.grad.flatten(), b.grad.flatten()]))
    model.zero_grad(set_to_none=True)


def test_gradient_cosines_follow_the_definition_over_shared_modules(pst):
    model, _, data = pst
    x, y = batch(data)
    ids = [0, 1, 5, 12]
    df = gradient_cosines(model, (x, y), ids)
    assert not df["cosine"].isna().any() and (df["cosine"].abs() <= 1 + 1e-9).all()
    grads = {s: lora_gradients(model, (x, y), s) for s in ids}
    for row in df.itertuples():
        shared = sorted(grads[row.stitch_a].keys() & grads[row.stitch_b].keys())
        assert row.shared_modules == len(shared) > 0
        ga = torch.cat([grads[row.stitch_a][m] for m in shared]).double()
        gb = torch.cat([grads[row.stitch_b][m] for m in shared]).double()
        assert row.cosine == pytest.approx(float(F.cosine_similarity(ga, gb, dim=0)), abs=1e-9)
    # anchors 0 and 1 share no module: not a pair
    assert not ((df["stitch_a"] == 0) & (df["stitch_b"] == 1)).any()


def test_zero_gradients_give_no_pair_instead_of_nan():
    net = StitchedViT(make_anchors())
    model = make_tunable(net, TuningConfig(rank=2))  # LoRA B is zero: A has no gradient, B does
    x, y = make_images(4), torch.arange(4) % NUM_CLASSES
    with torch.no_grad():
        for n, p in model.net.named_parameters():
            if "lora_A" in n:
                p.zero_()  # now B's gradient is zero too: no direction at all
    df = gradient_cosines(model, (x, y), [3, 4, 5])
    assert df.empty and list(df.columns) == ["stitch_a", "stitch_b", "shared_modules", "cosine"]


# ---- stored parameters -----------------------------------------------------------------------

def test_stored_params_count_only_what_the_deployed_stitches_run_through():
    """Counted by hand for the tiny family (widths 16/32/48, depth 4, 16 px and patch 8 so 5 tokens,
    5 classes, LoRA r = 2 on qkv and proj) deploying anchor 0 and stitch 4 = 0->1 (j=0, k=1, layer 0):
    no other stitching layer, no block of anchor 2 and no other stitch's biases are stored."""
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))
    assert model.net.stitch(4) == model.net.table[4] and (model.net.table[4].j, model.net.table[4].k) == (0, 1)
    lora = 4 * (2 * 16 + 48 * 2 + 2 * 16 + 16 * 2)  # anchor 0, blocks 0-3: qkv and proj, A and B
    lora += 3 * (2 * 32 + 96 * 2 + 2 * 32 + 32 * 2)  # anchor 1, blocks 1-3 (stitch 4's end)
    layer = (16 * 32 + 32) + (2 * 16 + 32 * 2)  # stitching layer 0 of pair 0 (LS fit) and its LoRA
    heads = 5 * 16 + 5 * 32  # head weights of anchors 0 and 1
    block = {16: 48 + 16 + 64 + 16, 32: 96 + 32 + 128 + 32}  # biases of qkv, proj, fc1, fc2
    biases = (4 * block[16] + 5) + (block[16] + 32 + 3 * block[32] + 5)  # stitch 0's own, stitch 4's own
    task = lora + layer + heads + biases
    assert task == 4426
    got = stored_params(model, [0, 4])
    assert got["task"] == task
    stem = (3 * 8 * 8 * 16 + 16) + 16 + 5 * 16  # anchor 0's patch embed, cls, pos
    frozen_block = {16: 2 * 32 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16),
                    32: 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)}
    frozen = stem + 4 * frozen_block[16] + 32 + 5  # anchor 0: blocks, final norm, head bias
    frozen += 3 * frozen_block[32] + 64 + 5  # anchor 1: blocks 1-3, final norm, head bias
    assert got["total"] == task + frozen == 58948
    # SN-Net stores its fine-tuned anchor 0 alone for a palette of anchor 0: no stitching layer
    full = make_tunable(StitchedViT(make_anchors()), TuningConfig(mode="full"))
    anchor0 = stem + 4 * frozen_block[16] + 32 + (5 * 16 + 5)
    assert stored_params(full, [0]) == dict(task=anchor0, total=anchor0)


# ---- tables ----------------------------------------------------------------------------------

def deployed_rows():
    """Two tasks x two seeds x two stitches per method, accuracies chosen by hand."""
    rows = []
    acc = {("esta", "a", 0): [0.5, 0.7], ("esta", "a", 1): [0.6, 0.8], ("esta", "b", 0): [0.2, 0.4],
           ("esta", "b", 1): [0.2, 0.2], ("snnet", "a", 0): [0.9, 0.9], ("snnet", "a", 1): [0.7, 0.7],
           ("snnet", "b", 0): [0.1, 0.3], ("snnet", "b", 1): [0.3, 0.3]}
    for (method, task, seed), accs in acc.items():
        for i, a in enumerate(accs):
            rows.append(dict(method=method, variant="default", task=task, seed=seed, stitch_id=i, front=i, end=i,
                             interval=-1 - i, reason="anchor", gmacs=1.0 + i, test_accuracy=a,
                             group="Natural" if task == "a" else "Structured", trainable_params=10))
    return pd.DataFrame(rows)


def test_accuracy_by_task_mean_and_std_over_seeds():
    t = accuracy_by_task(deployed_rows()).set_index(["method", "task"])
    # esta/a: per-seed means 0.6 and 0.7
    assert t.loc[("esta", "a"), "accuracy_mean"] == pytest.approx(0.65)
    assert t.loc[("esta", "a"), "accuracy_std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert t.loc[("esta", "a"), "best_accuracy_mean"] == pytest.approx(0.75)
    assert t.loc[("snnet", "b"), "accuracy_mean"] == pytest.approx(0.25)
    assert not t.isna().any().any()


def test_accuracy_by_group_orders_groups_and_adds_the_mean():
    g = accuracy_by_group(deployed_rows(), ("Natural", "Specialized", "Structured", "FGVC"))
    assert g["group"].tolist() == ["Natural", "Natural", "Structured", "Structured", "mean", "mean"]
    m = g.set_index(["method", "group"])
    # esta mean over tasks per seed: seed0 (0.6 + 0.3) / 2, seed1 (0.7 + 0.2) / 2 -> both 0.45
    assert m.loc[("esta", "mean"), "accuracy_mean"] == pytest.approx(0.45)
    assert m.loc[("esta", "mean"), "accuracy_std"] == pytest.approx(0.0)
    assert m.loc[("esta", "mean"), "tasks"] == 2


def test_deployed_curves_by_label_keep_each_labels_params():
    d = deployed_rows().assign(label=lambda t: t["method"])
    d.loc[d["method"] == "snnet", "trainable_params"] = 99
    c = deployed_curves(d, by=["label"])
    assert dict(zip(c["label"], c["trainable_params"])) == {"esta": 10, "snnet": 99}


def test_selection_ablation_adds_the_oracle_and_reports_test_accuracy():
    stitches = pd.DataFrame(dict(stitch_id=[0, 1, 2, 3], front=[0, 1, 0, 0], end=[0, 1, 1, 1],
                                 macs_nohead=[1.0, 4.0, 2.0, 2.1], gmacs=[1.0, 4.0, 2.0, 2.1]))
    importance = pd.DataFrame(dict(stitch_id=[0, 3, 1], interval=[0, 0, 1], reason=["anchor", "interval", "anchor"]))
    test = pd.DataFrame(dict(stitch_id=[0, 1, 2, 3], test_accuracy=[0.2, 0.8, 0.6, 0.3]))
    refreshed = pd.DataFrame(dict(stitch_id=[0, 2, 1], interval=[0, 0, 1], reason=["anchor", "interval", "anchor"]))
    out = selection_ablation(stitches, {"importance": importance, "refreshed": refreshed}, test, k=2)
    assert list(dict.fromkeys(out["selection"])) == ["importance", "refreshed", "oracle"]
    assert out.loc[out["selection"] == "refreshed", "test_accuracy"].tolist() == [0.2, 0.6, 0.8]
    imp = out[out["selection"] == "importance"].set_index("stitch_id")
    oracle = out[out["selection"] == "oracle"].set_index("stitch_id")
    assert sorted(imp.index) == [0, 1, 3] and imp.loc[3, "test_accuracy"] == 0.3
    # interval 0 = [1, 2.5): stitches 0, 2, 3 -> 2 has the best test accuracy; interval 1: stitch 1
    assert sorted(oracle.index) == [0, 1, 2] and oracle.loc[2, "test_accuracy"] == 0.6


# ---- snapshots -------------------------------------------------------------------------------

def test_snapshot_steps():
    assert snapshot_steps(100) == [10, 50, 100]
    assert snapshot_steps(3) == [1, 2, 3]
    assert snapshot_steps(1) == [1]


def test_snapshots_hold_the_state_after_that_step(pst):
    model, result, _ = pst
    assert sorted(result.snapshots) == [2, 6]
    final = {k: v.detach() for k, v in model.trainable().items()}
    for k, v in result.snapshots[6].items():
        torch.testing.assert_close(v, final[k], rtol=0, atol=0)
    moved = [k for k in final if not torch.equal(result.snapshots[2][k], final[k])]
    assert moved  # training went on after step 2


def test_snapshots_survive_an_interrupted_run(tmp_path):
    def run(ckpt, stop_after=None):
        net = StitchedViT(make_anchors(seed=0))
        model = make_tunable(net, TuningConfig(rank=2))
        data = TensorDataset(make_images(16, seed=5), torch.arange(16) % NUM_CLASSES)
        cfg = TrainConfig(epochs=3, batch_size=8, lr=5e-2, warmup_epochs=0)
        sampler = StitchSampler(net.num_stitches, cfg.total_steps(16), SamplerConfig(kind="uniform"), seed=0)
        return train(model, data, cfg, sampler, ckpt, settings=dict(t=1), progress=False,
                     stop_after=stop_after, snapshot_at=[1, 3, 6])

    run(tmp_path / "a", stop_after=4)
    resumed = run(tmp_path / "a")
    whole = run(tmp_path / "b")
    assert resumed.resumed_from == 4 and sorted(resumed.snapshots) == sorted(whole.snapshots) == [1, 3, 6]
    for step in (1, 3, 6):
        for k, v in whole.snapshots[step].items():
            torch.testing.assert_close(resumed.snapshots[step][k], v, rtol=0, atol=0)


def test_visit_table_counts_visits_and_the_fewest_visits_of_a_deployed_stitch():
    from esta.analysis import visit_counts, visit_table

    hist = pd.DataFrame(dict(stitch_id=[0, 2, 2, 3, 2, 0]))
    assert visit_counts(hist, 4).tolist() == [2, 0, 3, 1]
    runs = pd.DataFrame(dict(method="esta", task=["a"] * 4 + ["b"] * 4, seed=0, stitch_id=[0, 1, 2, 3] * 2,
                             visits=[2, 0, 3, 1, 6, 4, 1, 5],
                             deployed=[True, False, True, False, True, True, False, False]))
    stitches = pd.DataFrame(dict(stitch_id=[0, 1, 2, 3], gmacs=[1.0, 4.0, 2.0, 3.0], front=[0, 1, 0, 0],
                                 end=[0, 1, 1, 1]))
    t = visit_table(runs, stitches).set_index("stitch_id")
    assert t.index.tolist() == [0, 2, 3, 1]  # sorted by cost
    assert t.loc[0, "visits"] == 4.0 and t.loc[0, "visits_min"] == 2
    assert t.loc[0, "deployed_runs"] == 2 and t.loc[0, "deployed_visits_min"] == 2
    assert t.loc[1, "deployed_visits_min"] == 4  # deployed only where it had 4 visits
    assert pd.isna(t.loc[3, "deployed_visits_min"])
    assert t["anchor"].tolist() == [True, False, False, True]
