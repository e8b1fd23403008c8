"""The training loop and its resume, evaluation with prefix sharing, and stitch export (spec §5-§7)."""

from __future__ import annotations

import copy
import json

import pytest
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, expected_path, make_anchors, make_images, tiny_arch
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.evaluate import evaluate, predict
from esta.vit.export import export_stitch, load_stitch, merged_path
from esta.sampling import SamplerConfig, StitchSampler
from esta.vit.stitch import StitchedViT, ls_init
from esta.train import TrainConfig, train

N_IMAGES, BATCH = 24, 8  # 3 steps per epoch


def build(seed: int = 0, **adapt_kwargs):
    """Everything seeded, so two calls give bit-identical models (as a resumed job rebuilds it)."""
    net = StitchedViT(make_anchors(seed=seed))  # make_anchors seeds the global RNG used here too
    ls_init(net, make_images(16, seed=7))
    return make_tunable(net, TuningConfig(**{"rank": 2, **adapt_kwargs}))


def toy_data() -> TensorDataset:
    labels = torch.arange(N_IMAGES) % NUM_CLASSES
    return TensorDataset(make_images(N_IMAGES, seed=5), labels)


def cfg(epochs=3, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=BATCH, lr=1e-2, warmup_epochs=1, **kw)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.trainable().items()}


class ScriptedSampler(StitchSampler):
    """A sampler whose draws the test controls; statistics are kept as usual."""

    def __init__(self, script: list[int], n_stitches: int):
        super().__init__(n_stitches, len(script), SamplerConfig(kind="uniform"))
        self.script = script

    def sample(self, step: int) -> int:
        return self.script[step]


# ---------------------------------------------------------------------------------------------
# Training


def test_never_sampled_stitches_keep_their_biases_bit_for_bit():
    model = build()
    n = model.net.num_stitches
    script = [3, 10, 3, 0, 10, 3]  # Ti->S stitches and anchor Ti only
    before = snapshot(model)
    result = train(model, toy_data(), cfg(epochs=2), ScriptedSampler(script, n), progress=False)
    assert [h["stitch_id"] for h in result.history] == script
    after = snapshot(model)
    for sid in range(n):
        names = [k for k in before if k.startswith(f"biases.{sid}.")]
        assert names
        moved = [k for k in names if not torch.equal(before[k], after[k])]
        if sid in script:
            assert len(moved) == len(names), sid  # every bias on a sampled path trained
        else:
            assert moved == [], sid  # no momentum, no weight decay for never-sampled stitches
    # Nothing ends in or passes through ViT "B" (anchor 2): its head and LoRA never move.
    for k in before:
        if k.startswith("net.anchors.2.") or k.startswith("net.stitch_layers.1."):
            assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["net.anchors.1.head.weight"], after["net.anchors.1.head.weight"])


def test_step_records_snip_importance_of_the_sampled_stitch():
    """One full-batch step, recomputed by hand on a copy: Q = mean |θ·g| over the stitch's own biases
    and the LoRA on its path (LoRA B = 0 at the start: only the biases contribute, the mean counts all)."""
    model = build()
    ref = copy.deepcopy(model)
    data = toy_data()
    sid = 15
    sampler = ScriptedSampler([sid], model.net.num_stitches)
    result = train(model, data, TrainConfig(epochs=1, batch_size=N_IMAGES, warmup_epochs=0), sampler, progress=False)
    x, y = data.tensors
    F.cross_entropy(ref(x, sid), y).backward()
    lora, biases, _ = expected_path(sid)
    params = dict(ref.named_parameters())
    theta = [params[n] for n in lora] + [params[f"biases.{sid}." + b.replace(".", ":")] for b in biases]
    total = sum((p.detach() * p.grad).abs().sum().item() for p in theta)
    q = total / sum(p.numel() for p in theta)
    assert q > 0
    assert result.history[0]["importance"] == pytest.approx(q, rel=1e-4)
    assert sampler.m[sid].item() == pytest.approx(0.1 * q, rel=1e-4)
    assert sampler.visits.tolist() == [int(i == sid) for i in range(model.net.num_stitches)]
    assert sampler.last_step[sid].item() == 0


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    model = build(mode="full")
    n = model.net.num_stitches
    result = train(model, toy_data(), cfg(epochs=2), ScriptedSampler([0] * 6, n), progress=False)
    # 6 steps, 3 of warm-up: 1/3, 2/3, 1, then 0.5 (1 + cos(pi t / 3)) for t = 0, 1, 2
    factors = [1 / 3, 2 / 3, 1.0, 1.0, 0.75, 0.25]
    assert [h["lr"] for h in result.history] == pytest.approx([1e-2 * f for f in factors], rel=1e-9)


def run(model, ckpt_dir=None, settings=None, stop_after=None, train_cfg=None):
    train_cfg = train_cfg or cfg()
    total = 3 * round(train_cfg.epochs)
    sampler = StitchSampler(model.net.num_stitches, total, SamplerConfig(warmup_frac=0.2), seed=11)
    result = train(
        model,
        toy_data(),
        train_cfg,
        sampler,
        ckpt_dir=ckpt_dir,
        settings=settings,
        progress=False,
        stop_after=stop_after,
    )
    return result, sampler


@pytest.fixture(scope="module")
def uninterrupted():
    model = build()
    result, sampler = run(model)
    return snapshot(model), result, sampler


@pytest.mark.parametrize("k", [3, 5])  # at an epoch boundary and inside an epoch
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path, uninterrupted, k):
    ref_params, ref_result, ref_sampler = uninterrupted
    settings = dict(task="toy", method="esta")
    first, _ = run(build(), tmp_path, settings, stop_after=k)
    assert len(first.history) == k
    assert len(list(tmp_path.glob("*.pt"))) == 1

    model = build()  # a new job rebuilds the model the same way
    resumed, sampler = run(model, tmp_path, settings)
    assert resumed.resumed_from == k
    assert [h["stitch_id"] for h in resumed.history] == [h["stitch_id"] for h in ref_result.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref_result.history]
    params = snapshot(model)
    assert params.keys() == ref_params.keys()
    assert all(torch.equal(params[n], ref_params[n]) for n in params)
    assert torch.equal(sampler.m, ref_sampler.m)
    assert torch.equal(sampler.visits, ref_sampler.visits)
    assert torch.equal(sampler.last_step, ref_sampler.last_step)
    # the `loss` deployment score continues across the interruption, and is the history's window mean
    torch.testing.assert_close(sampler.window_loss(), ref_sampler.window_loss(), equal_nan=True, rtol=0, atol=0)
    from esta.scores import window_loss

    by_history = window_loss(pd.DataFrame(ref_result.history), model.net.num_stitches, ref_result.steps,
                             ref_sampler.loss_window)
    stats = ref_sampler.stats()
    assert stats["loss"].notna().sum() >= 2 and (stats["loss_visits"] == by_history["loss_visits"]).all()
    np.testing.assert_allclose(stats["loss"], by_history["loss"], rtol=1e-6)  # float32 losses, float64 sums
    # after the warm-up the importance sampler really was in charge (not a uniform-only run)
    assert ref_sampler.warmup_steps < len(ref_result.history)
    assert not torch.allclose(ref_sampler.probs(len(ref_result.history) - 1), ref_sampler.probs(0))


class Jittered(torch.utils.data.Dataset):
    """Images plus noise drawn from torch's global RNG at every fetch: a random augmentation."""

    def __init__(self, data: TensorDataset):
        self.x, self.y = data.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + torch.rand(self.x[i].shape), self.y[i]


def run_jittered(model, ckpt_dir, num_workers, stop_after=None):
    train_cfg = cfg(num_workers=num_workers, seed=4)
    sampler = StitchSampler(model.net.num_stitches, 9, SamplerConfig(warmup_frac=0.2), seed=11)
    result = train(model, Jittered(toy_data()), train_cfg, sampler, ckpt_dir=ckpt_dir, settings=dict(task="toy"),
                   progress=False, stop_after=stop_after)
    return result, sampler


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_inside_an_epoch_replays_random_augmentation(tmp_path, num_workers):
    """Random augmentation is a function of (seed, epoch, sample): interrupted after step 4 (inside
    epoch 1) and resumed gives the losses and parameters of an uninterrupted run, with workers too."""
    ref_model = build()
    ref, _ = run_jittered(ref_model, None, num_workers)
    run_jittered(build(), tmp_path, num_workers, stop_after=4)
    model = build()
    resumed, _ = run_jittered(model, tmp_path, num_workers)
    assert resumed.resumed_from == 4
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in ref.history]
    ref_params, params = snapshot(ref_model), snapshot(model)
    assert all(torch.equal(params[n], ref_params[n]) for n in params)
    ds = Jittered(toy_data())  # guard: the augmentation is random
    assert not torch.equal(ds[0][0], ds[0][0])


def test_resumed_run_reports_the_time_of_all_its_segments(tmp_path):
    first, _ = run(build(), tmp_path, dict(task="toy"), stop_after=4)
    (path,) = tmp_path.glob("*.pt")
    stored = torch.load(path, map_location="cpu", weights_only=True)["elapsed_s"]
    assert 0.5 * first.wall_s <= stored <= first.wall_s  # written at the end of the first segment
    assert first.wall_s == first.wall_s_segment
    resumed, _ = run(build(), tmp_path, dict(task="toy"))
    assert resumed.resumed_from == 4
    assert resumed.wall_s == pytest.approx(stored + resumed.wall_s_segment, rel=1e-12)
    assert resumed.wall_s > resumed.wall_s_segment > 0


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    run(build(), tmp_path, dict(task="a"), stop_after=2)
    same, _ = run(build(), tmp_path, dict(task="a"), stop_after=4)
    assert same.resumed_from == 2  # positive control: same settings resume
    other, _ = run(build(), tmp_path, dict(task="b"), stop_after=4)
    assert other.resumed_from == 0 and len(other.history) == 4
    other_lr, _ = run(build(), tmp_path, dict(task="b"), stop_after=4, train_cfg=cfg(weight_decay=0.0))
    assert other_lr.resumed_from == 0  # the training recipe is part of the settings


def test_checkpoint_loads_with_weights_only(tmp_path):
    model = build()
    run(model, tmp_path, dict(task="toy"), stop_after=2)
    (path,) = tmp_path.glob("*.pt")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["step"] == 2
    assert set(state["params"]) == set(model.trainable())
    assert all(torch.equal(state["params"][n], p) for n, p in model.trainable().items())
    assert state["sampler"]["visits"].sum().item() == 2


def test_sampler_built_for_other_length_is_refused():
    model = build()
    sampler = StitchSampler(model.net.num_stitches, 5, SamplerConfig())
    with pytest.raises(ValueError, match="5"):
        train(model, toy_data(), cfg(), sampler, progress=False)


# ---------------------------------------------------------------------------------------------
# Evaluation


def perturb(model, scale=0.05, seed=3):
    """Move the LoRA B weights and the stitch biases off their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n or n.startswith("biases."):
                p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("kwargs", [dict(mode="full"), dict(stitch_biases=False), dict()])
def test_predict_equals_per_stitch_forwards(kwargs):
    model = build(**kwargs)
    perturb(model)
    model.eval()
    assert model.shares_prefix == (model.biases is None)
    x = make_images(5)
    ids = list(range(model.net.num_stitches))[::-1]  # order must not matter
    got = predict(model, x, ids)
    assert sorted(got) == sorted(ids)
    with torch.no_grad():
        for sid in ids:
            torch.testing.assert_close(got[sid], model(x, sid), rtol=0, atol=1e-6, msg=str(sid))


def test_evaluate_counts_correct_predictions_across_batches():
    model = build(mode="full").eval()
    x = make_images(10, seed=9)
    with torch.no_grad():
        pred0 = model(x, 0).argmax(-1)
        pred7 = model(x, 7).argmax(-1)
    y = torch.where(torch.arange(10) < 5, pred0, (pred0 + 1) % NUM_CLASSES)  # stitch 0: exactly 50 %
    model.train()
    acc = evaluate(model, TensorDataset(x, y), stitch_ids=[0, 7, 20], batch_size=4)
    assert list(acc) == [0, 7, 20]
    assert acc[0] == 0.5
    assert acc[7] == (pred7 == y).sum().item() / 10
    assert all(0.0 <= a <= 1.0 for a in acc.values())
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="99"):
        evaluate(model, TensorDataset(x, y), stitch_ids=[0, 99])


# ---------------------------------------------------------------------------------------------
# Export


@pytest.fixture(scope="module")
def trained_pst():
    model = build()
    perturb(model)  # non-zero LoRA B and stitch-specific biases: merging and baking must matter
    return model.eval()


def test_export_round_trip_matches_the_stitched_model(trained_pst, tmp_path):
    model = trained_pst
    x = make_images(4, seed=13)
    with torch.no_grad():
        before = [model(x, sid) for sid in range(model.net.num_stitches)]
    for sid in (1, 5, 20):  # anchor S, a Ti->S stitch, an S->B stitch
        meta_path = export_stitch(model, sid, tmp_path, tiny_arch(), provenance=dict(seed=0, task="toy"))
        weights = meta_path.with_suffix(".safetensors")
        assert meta_path.suffix == ".json" and weights.is_file()
        meta = json.loads(meta_path.read_text())
        s = model.net.table[sid]
        assert meta["provenance"] == dict(seed=0, task="toy")
        assert meta["arch"]["stitch_id"] == sid
        assert (meta["arch"]["is_anchor"], meta["arch"]["j"], meta["arch"]["k"]) == (s.is_anchor, s.j, s.k)
        assert meta["arch"]["anchors"][0] == tiny_arch()[s.front]
        state = load_file(str(weights))
        assert not any("lora" in k for k in state)
        assert meta["n_params"] == sum(v.numel() for v in state.values())
        standalone = load_stitch(meta_path)
        with torch.no_grad():
            out = standalone(x)
        assert (out - before[sid]).abs().max().item() <= 1e-4, sid
    # Exporting merged into copies: every stitch of the live model still gives the same logits.
    with torch.no_grad():
        after = [model(x, sid) for sid in range(model.net.num_stitches)]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert not model.net.anchors[1].blocks[0].attn.qkv.merged


def test_the_perturbation_matters_for_export(trained_pst):
    """Guard for the round-trip test: the anchor without the stitch's LoRA and biases is far off."""
    x = make_images(4, seed=13)
    plain = build().eval()  # same weights, fresh LoRA and biases
    with torch.no_grad():
        assert (plain(x, 5) - trained_pst(x, 5)).abs().max().item() > 1e-2


def test_merged_equals_unmerged(trained_pst):
    x = make_images(4, seed=13)
    layer = copy.deepcopy(trained_pst.net.anchors[0].blocks[1].attn.qkv)
    assert isinstance(layer, LoraLayer)
    tokens = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        unmerged = layer(tokens)
        layer.merge()
        merged = layer.get_base_layer()(tokens)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)
    for sid in (0, 8, 17):
        standalone = merged_path(trained_pst, sid)
        assert not any(isinstance(m, LoraLayer) for m in standalone.modules())
        with torch.no_grad():
            torch.testing.assert_close(standalone(x), trained_pst(x, sid), rtol=1e-5, atol=1e-5)


def test_full_mode_export_round_trip(tmp_path):
    model = build(mode="full").eval()
    x = make_images(3)
    for sid in (0, 16):
        standalone = load_stitch(export_stitch(model, sid, tmp_path, tiny_arch()))
        with torch.no_grad():
            assert (standalone(x) - model(x, sid)).abs().max().item() <= 1e-5


def test_load_stitch_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="stitch_007"):
        load_stitch(tmp_path / "stitch_007.json")
