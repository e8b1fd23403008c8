"""Stitched LLaMA (spec §11): positions, the stitched forward against HF, cached decoding, LS init.

Anchors are the tiny family of ``esta.llm.anchors`` at a 61-token vocabulary, randomly initialised
with a wide init (std 0.1, not HF's 0.02) so that logits are far from zero and a wrong position, mask
or layer would show far above the 1e-5 tolerance.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from esta.llm.anchors import family
from esta.llm.stitch import StitchedLlama, ls_init
from esta.stitches import depth_positions, enumerate_stitches
from esta.lstsq import affine_lstsq

torch.set_num_threads(1)
VOCAB = 61


def tiny_anchors(seed: int = 0, vocab: int = VOCAB) -> list[LlamaForCausalLM]:
    torch.manual_seed(seed)
    out = []
    for spec in family("tiny"):
        cfg = dict(spec.config, vocab_size=vocab, initializer_range=0.1)
        out.append(LlamaForCausalLM(LlamaConfig(**cfg)).eval())
    return out


def left_padded_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 carries 3 pads on the left, row 2 one
    mask[2, :1] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_depth_rule_32_to_40_gives_31_stitches_with_k_after_j():
    pos = depth_positions(32, 40)
    assert len(pos) == 31
    assert all(k > j for j, k, _ in pos)
    assert [layer for _, _, layer in pos] == list(range(31))  # one stitching layer per position
    assert pos[20][:2] == (20, 26)  # front 21 layers, end layers 26..39 (14), spec's ~9.0 B example
    table = enumerate_stitches([32, 40])
    assert len(table) == 33 and table[0].is_anchor and table[1].is_anchor and table[0].depth == 32
    assert all(s.front == 0 and s.end == 1 for s in table[2:])


def test_equal_depths_work_under_both_rules():
    assert [(j, k) for j, k, _ in depth_positions(4, 4)] == [(0, 1), (1, 2), (2, 3)]
    paired = enumerate_stitches([4, 4], rule="paired")
    assert len(paired) == 2 + (3 * 4 - 2)  # SN-Net's window rule, spec §2
    with pytest.raises(ValueError, match="equal depth"):
        enumerate_stitches([4, 6], rule="paired")


def test_anchor_stitches_equal_hf_logits_on_left_padded_batch():
    anchors = tiny_anchors()
    net = StitchedLlama(anchors).eval()
    ids, mask = left_padded_batch()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    keep = mask.bool()
    with torch.no_grad():
        for a, lm in enumerate(anchors):
            ref = lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            got = net(ids, mask, a)
            assert ref[keep].abs().max() > 1.0  # logits far from zero: the comparison has teeth
            assert (got[keep] - ref[keep]).abs().max() <= 1e-5
            # left padding changes nothing: row 1 equals its unpadded self
            alone = net(ids[1:2, 3:], None, a)
            assert torch.allclose(got[1, 3:], alone[0], atol=1e-5)


def test_cached_greedy_decoding_matches_uncached_for_every_stitch():
    net = StitchedLlama(tiny_anchors()).eval()
    ids, mask = left_padded_batch(2)
    assert net.num_stitches == 2 + 3  # 4 -> 6 layers: j = 0, 1, 2
    for sid in range(net.num_stitches):
        cached = net.generate(ids, mask, sid, max_new_tokens=6, use_cache=True)
        plain = net.generate(ids, mask, sid, max_new_tokens=6, use_cache=False)
        assert cached.shape == (3, 15)
        assert torch.equal(cached, plain), f"stitch {sid}"
    # eos: a row that emitted it continues with pad, and decoding stops once every row is done
    free = net.generate(ids, mask, 3, max_new_tokens=6)
    eos = int(free[0, 9])  # row 0's first new token
    stopped = net.generate(ids, mask, 3, max_new_tokens=6, eos_token_id=eos, pad_token_id=VOCAB - 1)
    assert stopped.shape == free.shape and torch.equal(stopped[1:], free[1:])  # rows 1, 2 never emit it
    assert torch.equal(stopped[0, :10], free[0, :10]) and (stopped[0, 10:] == VOCAB - 1).all()
    assert torch.equal(stopped, net.generate(ids, mask, 3, max_new_tokens=6, use_cache=False,
                                             eos_token_id=eos, pad_token_id=VOCAB - 1))
    # and the anchors' own stitch decodes as HF's generate does
    hf = net.anchors[1].generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                 pad_token_id=0)
    assert torch.equal(net.generate(ids, mask, 1, max_new_tokens=6), hf)


def test_affine_lstsq_recovers_a_known_map_and_ridge_shrinks_it():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=g)
    w, b = torch.randn(24, 16, generator=g), torch.randn(24, generator=g)
    w_hat, b_hat = affine_lstsq(x, x @ w.T + b)
    assert torch.allclose(w_hat, w.double(), atol=1e-8) and torch.allclose(b_hat, b.double(), atol=1e-8)
    w_ridge, _ = affine_lstsq(x, x @ w.T + b, ridge=0.5)
    assert w_ridge.norm() < 0.9 * w_hat.norm()


def layer_io(lm, ids, mask):
    """Inputs of every decoder layer and the last one's output (before the final norm), captured
    with forward hooks on HF's own forward, at the non-pad tokens."""
    seen = []

    def keep_io(module, args, kwargs, out):
        seen.append((args[0] if args else kwargs["hidden_states"], out))

    hooks = [layer.register_forward_hook(keep_io, with_kwargs=True) for layer in lm.model.layers]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        lm(input_ids=ids, attention_mask=mask, position_ids=pos)
    for h in hooks:
        h.remove()
    keep = mask.bool()
    return [x[keep].double() for x, _ in seen] + [seen[-1][1][keep].double()]


@pytest.mark.parametrize("rule", ["depth", "paired"])
def test_ls_init_solves_the_normal_equations_of_each_stitch(rule):
    anchors = tiny_anchors()
    if rule == "paired":  # equal depths: give the end anchor the front's 4 layers
        cfg = anchors[1].config
        cfg.num_hidden_layers = 4
        torch.manual_seed(5)
        anchors[1] = LlamaForCausalLM(cfg).eval()
    net = StitchedLlama(anchors, rule=rule).eval()
    ids, mask = left_padded_batch(3)
    residual = ls_init(net, [(ids, mask)], ridge=0.0)
    stitches = [s for s in net.table if not s.is_anchor]
    assert set(residual) == {s.stitch_id for s in stitches} and all(r > 0 for r in residual.values())
    front, end = layer_io(anchors[0], ids, mask), layer_io(anchors[1], ids, mask)
    layers = {}
    for s in stitches:
        layers.setdefault(s.layer, []).append((front[s.j + 1], end[s.k]))
        # the residual reported is the installed layer's (for a shared layer: the averaged one)
        lin = net.stitch_layers[0][s.layer]
        x, y = front[s.j + 1], end[s.k]
        installed = ((x @ lin.weight.double().T + lin.bias.double() - y).norm() / y.norm()).item()
        assert residual[s.stitch_id] == pytest.approx(installed, rel=1e-3, abs=1e-6)
    if rule == "depth":  # each position's own least-squares fit beats the zero map
        assert all(r < 1 for r in residual.values())
    for layer, pairs in layers.items():
        lin = net.stitch_layers[0][layer]
        w, b = lin.weight.double(), lin.bias.double()
        if len(pairs) == 1:  # at the least-squares optimum the residual is orthogonal to [X, 1]
            x, y = pairs[0]
            err = x @ w.T + b - y
            assert (x.T @ err).abs().max() < 1e-3 * (x.T @ y).abs().max()
            assert err.sum(0).abs().max() < 1e-3 * y.abs().sum(0).max()
        else:  # a shared layer is the mean of its positions' solutions (SN-Net)
            sols = [affine_lstsq(x, y) for x, y in pairs]
            assert torch.allclose(w, torch.stack([s[0] for s in sols]).mean(0), atol=1e-5)
            assert torch.allclose(b, torch.stack([s[1] for s in sols]).mean(0), atol=1e-5)
    if rule == "paired":
        assert any(s.j == 3 for s in stitches)  # X is the last layer's output before the final norm


def test_checkpointed_forward_gives_the_same_gradients():
    anchors = tiny_anchors()
    ids, mask = left_padded_batch(4)
    grads = []
    plain = StitchedLlama(anchors)
    for ckpt in (False, True):
        net = StitchedLlama(anchors, checkpointing=ckpt)
        net.load_state_dict(plain.state_dict())  # same stitching layers
        net.zero_grad(set_to_none=True)
        bias = torch.zeros(128, requires_grad=True)
        over = {"anchors.1.model.layers.4.self_attn.q_proj.bias": bias}
        net(ids, mask, 3, overrides=over).square().mean().backward()
        grads.append((net.anchors[0].model.layers[0].mlp.up_proj.weight.grad.clone(), bias.grad.clone()))
    assert grads[1][1].abs().max() > 0  # the override reached the recomputed layer
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)
