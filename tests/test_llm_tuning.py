"""PST for Stitched LLaMA (spec §11): a fresh adapter changes nothing, gradients reach exactly the
sampled stitch's parameters, and the trainable counts of the tiny and the 7B -> 13B families."""

from __future__ import annotations

import copy

import torch

from esta.llm.stitch import StitchedLlama, ls_init
from esta.llm.tuning import LlamaTuningConfig, family_trainable, make_tunable
from esta.llm.tuning import trainable_by_kind as count_trainable

from test_llm_stitch import VOCAB, left_padded_batch, tiny_anchors

torch.set_num_threads(1)


def ls_net() -> StitchedLlama:
    net = StitchedLlama(tiny_anchors()).eval()
    ls_init(net, [left_padded_batch(5)])
    return net


def test_fresh_pst_model_equals_the_ls_initialised_stitched_model():
    net = ls_net()
    reference = copy.deepcopy(net)
    model = make_tunable(net).eval()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        for sid in range(model.num_stitches):
            assert torch.allclose(model(ids, mask, sid), reference(ids, mask, sid), atol=1e-5), sid
        # the biases are live: moving stitch 3's changes stitch 3 and no other stitch
        before = [model(ids, mask, sid) for sid in range(model.num_stitches)]
        for p in model.biases[3]:
            p.add_(0.5)
        after = [model(ids, mask, sid) for sid in range(model.num_stitches)]
    for sid in range(model.num_stitches):
        assert torch.equal(before[sid], after[sid]) != (sid == 3), sid


def test_a_step_on_one_stitch_grads_only_its_biases_and_the_lora_on_its_path():
    model = make_tunable(ls_net()).train()
    ids, mask = left_padded_batch()
    labels = ids.masked_fill(mask == 0, -100)
    for sid in (0, 3):
        model.zero_grad(set_to_none=True)
        model.loss((ids, mask, labels), sid).backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        own = {f"biases.{sid}.{i}" for i in range(len(model.biases[sid]))}
        lora_on_path = {n for n, _ in model.named_parameters()
                        if "lora_" in n and model.net.on_path(n.removeprefix("net."), sid)}
        assert own and lora_on_path
        assert got == own | lora_on_path, sid
        assert {id(p) for p in model.importance_params(sid)} == {id(p) for n, p in model.named_parameters() if n in got}
    # stitch 3 = front layers 0..1 -> end layers 3..5: front layer 2 and end layers 0..2 stay untouched
    names = {n for n, p in model.named_parameters() if p.grad is not None}
    assert not any("anchors.0.model.layers.2." in n or "anchors.1.model.layers.0." in n for n in names)
    assert all(not p.requires_grad for n, p in model.named_parameters()
               if any(k in n for k in ("embed_tokens", "norm", "lm_head")))


def test_without_stitch_biases_only_the_shared_lora_trains():
    model = make_tunable(ls_net(), LlamaTuningConfig(stitch_biases=False)).train()
    ids, mask = left_padded_batch()
    model.loss((ids, mask, ids.masked_fill(mask == 0, -100)), 4).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    assert got and all("lora_" in n for n in got) and count_trainable(model)["biases"] == 0


def test_one_anchor_alone_takes_the_same_recipe():
    """The baseline: each anchor adapted alone with the same LoRA (and its own biases)."""
    lm = tiny_anchors()[1]
    model = make_tunable(StitchedLlama([lm]))
    assert model.num_stitches == 1
    counts = count_trainable(model)
    assert counts["lora_stitch"] == 0 and counts["lora_layers"] == 6 * 2 * 8 * 2 * 128
    assert counts["biases"] == 6 * 2 * 128


def test_trainable_counts_tiny_and_7b_13b():
    tiny = count_trainable(make_tunable(StitchedLlama(tiny_anchors())))
    big = family_trainable("llama-7b-13b", LlamaTuningConfig())
    print(f"\ntrainable tiny: {tiny}\ntrainable llama-7b-13b: {big}")
    r = 8
    # q_proj and v_proj are d x d in LLaMA: LoRA adds r (d + d) each
    assert big["lora_layers"] == 32 * 2 * r * 2 * 4096 + 40 * 2 * r * 2 * 5120 == 10_747_904
    assert big["lora_stitch"] == 31 * r * (4096 + 5120) == 2_285_568
    ks = [round((j + 1) * 40 / 32) for j in range(31)]
    stitch_biases = sum((j + 1) * 2 * 4096 + (40 - k) * 2 * 5120 + 5120 for j, k in zip(range(31), ks))
    anchor_biases = 32 * 2 * 4096 + 40 * 2 * 5120
    assert big["biases"] == stitch_biases + anchor_biases
    # spec §11: about 23.6 M for the 31 stitches (the anchors' own biases add 0.67 M)
    assert abs(big["total"] - anchor_biases - 23.6e6) < 0.05e6
    assert tiny["total"] < 0.05 * sum(p.numel() for p in StitchedLlama(tiny_anchors()).parameters())


def test_the_shared_training_loop_trains_a_stitched_llama():
    """``esta.train.train`` drives the LLM family through the same interface as the ViTs."""
    from esta.llm.data import encode_alpaca
    from esta.llm.tasks import TASKS_B, make_records, train_tokenizer
    from esta.sampling import SamplerConfig, StitchSampler
    from esta.train import TrainConfig, train

    records = make_records(TASKS_B, 32, seed=0)
    tok = train_tokenizer(records, vocab_size=VOCAB + 300)
    data, _ = encode_alpaca(records, tok, max_length=128, pad_as_eos=True)
    net = StitchedLlama(tiny_anchors(vocab=len(tok)))
    ls_init(net, [(data.tensors[0][:8], data.tensors[1][:8])])
    model = make_tunable(net)
    batch = data.tensors
    with torch.no_grad():
        before = [model.loss(batch, sid).item() for sid in range(model.num_stitches)]
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, warmup_epochs=1)
    sampler = StitchSampler(model.num_stitches, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=0)
    result = train(model, data, cfg, sampler, progress=False)
    with torch.no_grad():
        after = [model.loss(batch, sid).item() for sid in range(model.num_stitches)]
    visited = {h["stitch_id"] for h in result.history}
    assert all(after[s] < before[s] - 0.1 for s in visited), (before, after)
