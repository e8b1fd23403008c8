"""Data-parallel Stitched LLaMA (spec §11, issue 12 item 10): 2 CPU processes (gloo), each with half of
every global batch, end where 1 process with the full batch ends, for the same sequence of stitches
drawn by the importance sampler from the all-reduced gradients.

The first test drives the steps of ``esta.train.train``'s loop body by hand, with the one line the
data-parallel path adds after ``loss.backward()`` (``model.reduce_grads(sid)``); the second runs the
shared loop itself and compares what it writes (the history, the sampler's statistics of stats.csv) too.
"""

from __future__ import annotations

import copy
import functools
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from esta.llm import distributed
from esta.llm.data import encode_alpaca
from esta.llm.stitch import StitchedLlama, ls_init
from esta.llm.tasks import TASKS_B, make_records, train_tokenizer
from esta.llm.tuning import make_tunable
from esta.sampling import SamplerConfig, StitchSampler, snip_importance
from esta.scores import LossWindow

from test_llm_stitch import tiny_anchors

STEPS, GLOBAL_BATCH = 6, 8
STATS = ("visits", "importance", "loss", "loss_visits")  # the sampler's statistics the deployment scores read


@functools.cache
def _pristine():
    records = make_records(TASKS_B, 3 * GLOBAL_BATCH, seed=0, min_digits=2, max_digits=9)
    tok = train_tokenizer(records, vocab_size=300)
    data, _ = encode_alpaca(records, tok, max_length=128, pad_as_eos=True)
    net = StitchedLlama(tiny_anchors(vocab=len(tok)))
    ls_init(net, [data.tensors[:2]])
    return make_tunable(net).train(), data


def _build():
    """A fresh copy of the same initial model (built once; forked ranks inherit it)."""
    model, data = _pristine()
    return copy.deepcopy(model), data


def _join(rank: int, world: int, port: int):
    """This rank's copy of the initial model, in the process group as torchrun would set it up."""
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        distributed.init_process_group("cpu")
    return _build()


def _run(rank: int, world: int, port: int, out_dir: str) -> None:
    model, data = _join(rank, world, port)
    if world > 1:
        with torch.no_grad():  # replicas that start apart: the broadcast must bring them together
            for p in model.trainable().values():
                p.add_(rank * 0.3)
        distributed.data_parallel(model)
    sampler = StitchSampler(model.num_stitches, STEPS, SamplerConfig(kind="importance", warmup_frac=0.3), seed=0)
    opt = torch.optim.AdamW(model.param_groups(1e-3, None, 1e-4))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    sids, qs, losses = [], [], []
    for step in range(STEPS):
        idx = order[(step * GLOBAL_BATCH) % len(data):][:GLOBAL_BATCH]
        batch = tuple(t[idx] for t in data.tensors)
        sid = sampler.sample(step)
        loss = model.loss(batch, sid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.reduce_grads(sid)  # the data-parallel hook
        q = snip_importance(model.importance_params(sid))
        sampler.update(sid, q, step)
        opt.step()
        sids.append(sid), qs.append(float(q)), losses.append(loss.item())
    state = {k: v.detach().clone() for k, v in model.trainable().items()}
    torch.save(dict(state=state, sids=sids, qs=qs, losses=losses), os.path.join(out_dir, f"{rank}-of-{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_with_half_batches_match_one_process_with_the_full_batch(tmp_path):
    _, data = _build()
    targets = (data.tensors[2][:, 1:] != -100).sum(1)
    assert targets[:4].sum() != targets[4:8].sum()  # unequal shares: the global token mean matters
    # fork: the ranks inherit the imported modules and the built model instead of rebuilding them
    mp.start_processes(_run, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    _run(0, 1, 0, str(tmp_path))
    one, r0, r1 = (torch.load(tmp_path / f, weights_only=True) for f in ("0-of-1.pt", "0-of-2.pt", "1-of-2.pt"))
    assert r0["sids"] == r1["sids"] == one["sids"]  # one stitch per step on every rank, as in one process
    assert len(set(one["sids"])) > 1
    assert torch.allclose(torch.tensor(r0["qs"]), torch.tensor(one["qs"]), rtol=1e-5, atol=0)
    assert r0["qs"] == r1["qs"]  # importance from the all-reduced gradients: the same on every rank
    # every rank's loss value is the full batch's token mean (what the sampler and the history see)
    assert r0["losses"] == r1["losses"]
    assert torch.allclose(torch.tensor(r0["losses"]), torch.tensor(one["losses"]), rtol=0, atol=1e-5)
    moved = 0
    for name, ref in one["state"].items():
        assert torch.equal(r0["state"][name], r1["state"][name]), name  # replicas stay identical
        assert (r0["state"][name] - ref).abs().max() <= 1e-5, name
    start, _ = _build()
    moved = sum(not torch.equal(start.trainable()[n], v) for n, v in one["state"].items())
    assert moved > 0  # training moved the stitches it visited


def _run_loop(rank: int, world: int, port: int, out_dir: str) -> None:
    """The shared loop itself, ``esta.train.train``, as one rank of ``world``."""
    from esta.train import TrainConfig, train

    model, data = _join(rank, world, port)
    if world > 1:
        distributed.data_parallel(model)
    cfg = TrainConfig(epochs=2, batch_size=GLOBAL_BATCH, lr=1e-3, warmup_epochs=0.5)
    sampler = StitchSampler(model.num_stitches, cfg.total_steps(len(data)),
                            SamplerConfig(kind="importance", warmup_frac=0.3), seed=0,
                            loss_window=LossWindow(1.0, "recent"))  # every visit: each stitch's loss compared
    result = train(model, data, cfg, sampler, progress=False)
    state = {k: v.detach().clone() for k, v in model.trainable().items()}
    stats = sampler.stats()  # what llm_train writes as stats.csv (importance.csv)
    torch.save(dict(state=state, sids=[h["stitch_id"] for h in result.history],
                    history={c: torch.tensor([float(h[c]) for h in result.history]) for c in ("loss", "importance")},
                    stats={c: torch.tensor(stats[c].to_numpy(dtype=float)) for c in STATS}),
               os.path.join(out_dir, f"loop-{rank}-of-{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


def test_the_shared_loop_under_two_ranks_matches_one_process(tmp_path):
    mp.start_processes(_run_loop, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    _run_loop(0, 1, 0, str(tmp_path))
    one, r0, r1 = (torch.load(tmp_path / f"loop-{f}.pt", weights_only=True) for f in ("0-of-1", "0-of-2", "1-of-2"))
    assert r0["sids"] == r1["sids"] == one["sids"] and len(set(one["sids"])) > 1
    for name, ref in one["state"].items():
        assert torch.equal(r0["state"][name], r1["state"][name]), name
        assert (r0["state"][name] - ref).abs().max() <= 1e-5, name
    # the history and stats.csv of the 2-process run are the 1-process run's: the loss is the global batch's
    for part in ("history", "stats"):
        for col, ref in one[part].items():
            assert torch.equal(r0[part][col].isnan(), ref.isnan()), (part, col)
            assert torch.allclose(r0[part][col], ref, rtol=0, atol=1e-5, equal_nan=True), (part, col)
            assert torch.equal(r0[part][col].nan_to_num(), r1[part][col].nan_to_num()), (part, col)
    assert one["stats"]["loss_visits"].sum() > 0 and one["stats"]["loss"].isfinite().sum() > 1
