"""Gradient checkpointing of StitchedViT (train.grad_checkpointing): the same gradients as without,
for anchors and stitched paths, in PST (stitch biases through functional_call, peft LoRA) and full
mode; less memory saved for backward; and the training loop switches it on from its config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, make_images, trained_like
from torch.utils.data import TensorDataset

from esta.sampling import SamplerConfig, StitchSampler
from esta.train import TrainConfig, train

ANCHOR, STITCHED = 1, 10  # the middle anchor, and a stitch from anchor 0 into anchor 1


def grads(model, sid: int) -> dict[str, torch.Tensor]:
    x, y = make_images(4), torch.arange(4) % NUM_CLASSES
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, sid), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["pst", "full"])
@pytest.mark.parametrize("sid", [ANCHOR, STITCHED])
def test_checkpointed_gradients_equal_plain(mode, sid):
    model = trained_like(mode)
    want = grads(model, sid)
    model.set_grad_checkpointing(True)
    got = grads(model, sid)
    assert got.keys() == want.keys()
    if mode == "pst":  # the stitch's own biases in the blocks got gradients through the recomputation
        assert any(n.startswith(f"biases.{sid}.") and "blocks" in n for n in got)
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=1e-6, msg=n)


def saved_bytes(model, sid: int) -> int:
    """Bytes autograd saves for backward outside checkpointed regions (storages de-duplicated)."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(make_images(4), sid)
    return sum(saved.values())


def test_checkpointing_saves_less_and_is_off_without_grad():
    model = trained_like("pst")
    plain = saved_bytes(model, STITCHED)
    model.set_grad_checkpointing(True)
    assert saved_bytes(model, STITCHED) < plain / 2
    with torch.no_grad():  # evaluation never pays for recomputation
        torch.testing.assert_close(model(make_images(2), STITCHED), model.eval()(make_images(2), STITCHED))


def test_train_switches_checkpointing_on_and_trains_the_same():
    data = TensorDataset(make_images(8), torch.arange(8) % NUM_CLASSES)
    states = {}
    for flag in (False, True):
        model = trained_like("pst")
        cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0, grad_checkpointing=flag)
        sampler = StitchSampler(model.net.num_stitches, cfg.total_steps(len(data)), SamplerConfig(), seed=0)
        train(model, data, cfg, sampler, progress=False)
        assert model.net.grad_checkpointing is flag
        states[flag] = model.trainable()
    for n, p in states[False].items():
        torch.testing.assert_close(states[True][n], p, rtol=0, atol=1e-5, msg=n)
