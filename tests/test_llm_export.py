"""Export of a deployed Stitched LLaMA stitch (spec §6, §11): the folder holds only the stitch's
path, with LoRA merged and its biases baked in, and loads back (safetensors only) into a model whose
logits equal the stitched model's and whose greedy generations are token-identical."""

from __future__ import annotations

import pytest
import torch

from esta.llm.costs import stitch_costs
from esta.llm.export import export_stitch, load_stitch, path_state_dict
from esta.llm.stitch import StitchedLlama, ls_init
from esta.llm.tasks import TASKS_B, make_records, train_tokenizer
from esta.llm.tuning import make_tunable

from test_llm_stitch import left_padded_batch, tiny_anchors

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained():
    """A PST model as after training: non-zero LoRA B factors and stitch biases everywhere."""
    tok = train_tokenizer(make_records(TASKS_B, 30, seed=0), vocab_size=300)
    net = StitchedLlama(tiny_anchors(vocab=len(tok))).eval()
    ls_init(net, [left_padded_batch(5)])
    model = make_tunable(net).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model, tok


@pytest.mark.parametrize("sid", [3, 1])  # a stitch across both anchors, and the large anchor alone
def test_exported_stitch_reloads_with_equal_logits_and_identical_generations(trained, tmp_path, sid):
    model, tok = trained
    ids, mask = left_padded_batch(2)
    with torch.no_grad():
        ref = model(ids, mask, sid)
    folder = export_stitch(model, sid, tmp_path / f"stitch{sid}", tokenizer=tok, extra=dict(seed=0))
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")) == []
    deployed, tok2 = load_stitch(folder)
    with torch.no_grad():
        got = deployed(ids, mask)
        assert (got - ref).abs().max() <= 1e-4
        # the LoRA and the biases matter: without them the logits would be far off
        assert (model.net(ids, mask, sid) - ref).abs().max() > 1e-2
        assert torch.equal(model(ids, mask, sid), ref)  # export merged nothing into the shared weights
    eos = int(model.generate(ids, mask, sid, 4)[0, -2])  # a token the model emits, to exercise stopping
    a = model.generate(ids, mask, sid, 10, eos_token_id=eos)
    b = deployed.generate(ids, mask, 10, eos_token_id=eos)
    assert torch.equal(a, b) and (a[0, ids.shape[1]:] == eos).any()
    assert tok2.get_vocab() == tok.get_vocab()
    assert deployed.config["extra"] == dict(seed=0) and deployed.config["stitch_id"] == sid


def test_only_the_stitch_path_is_stored(trained):
    model, _ = trained
    net = model.net
    s = net.stitch(3)  # front layers 0..1 -> stitching layer 1 -> end layers 3..5
    stored, _ = path_state_dict(model, 3)
    modules = {k.rsplit(".", 1)[0] for k in stored}
    assert "anchors.0.model.embed_tokens" in modules and "anchors.1.model.embed_tokens" not in modules
    assert "anchors.1.lm_head" in modules and "anchors.0.lm_head" not in modules
    assert "anchors.1.model.norm" in modules and "anchors.0.model.norm" not in modules
    layers = {(int(k.split(".")[1]), int(k.split(".")[4])) for k in stored if ".layers." in k}
    assert layers == {(0, 0), (0, 1), (1, 3), (1, 4), (1, 5)}
    assert {k for k in stored if k.startswith("stitch_layers")} == {f"stitch_layers.0.{s.layer}.weight",
                                                                    f"stitch_layers.0.{s.layer}.bias"}
    assert not any("lora_" in k or "base_layer" in k for k in stored)
    # the stored size is the stitch's parameter count (esta.llm.costs) plus the baked q/v biases
    baked = sum(v.numel() for k, v in stored.items() if k.endswith(("q_proj.bias", "v_proj.bias")))
    vocab = net.anchors[0].config.vocab_size  # counted on LoRA-free anchors of the same shapes
    params = stitch_costs(tiny_anchors(vocab=vocab), ["a", "b"]).set_index("stitch_id").params
    assert baked == (2 * 64 + 3 * 128) * 2
    assert sum(v.numel() for v in stored.values()) - baked == params[3]
    # baked stitching-layer bias is the stitch's own, not the shared LS one
    own = model.biases_for(3)[f"stitch_layers.0.{s.layer}.base_layer.bias"]
    assert torch.equal(stored[f"stitch_layers.0.{s.layer}.bias"], own)
    assert not torch.equal(own, net.stitch_layers[0][s.layer].base_layer.bias)


def test_a_missing_folder_names_what_it_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="stitch_config.json"):
        load_stitch(tmp_path / "nothing")


def test_an_anchor_adapted_alone_exports_too(tmp_path):
    """The baseline of issue 12: one anchor with the same LoRA recipe, exported the same way."""
    tok = train_tokenizer(make_records(TASKS_B, 30, seed=0), vocab_size=300)
    model = make_tunable(StitchedLlama(tiny_anchors(vocab=len(tok))[:1])).eval()
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(0.05)
    ids, mask = left_padded_batch(3)
    deployed, tok2 = load_stitch(export_stitch(model, 0, tmp_path / "alone"))
    assert tok2 is None
    with torch.no_grad():
        assert (deployed(ids, mask) - model(ids, mask, 0)).abs().max() <= 1e-4
