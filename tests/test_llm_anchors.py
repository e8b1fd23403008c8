"""LLaMA anchors from local folders, the same-vocabulary check, and per-stitch parameters and MACs
on the meta device (spec §11, §3)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from esta.llm.anchors import build_family, load_anchors
from esta.llm.costs import stitch_costs, stitch_table
from esta.llm.stitch import StitchedLlama
from esta.llm.tasks import TASKS_A, make_records, train_tokenizer

from test_llm_stitch import VOCAB, left_padded_batch, tiny_anchors

torch.set_num_threads(1)


def save(lm, folder, tokenizer=None):
    lm.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return str(folder)


def test_load_anchors_reads_local_folders_back(tmp_path):
    anchors = tiny_anchors()
    tok = train_tokenizer(make_records(TASKS_A, 20, seed=0), vocab_size=VOCAB + 200)
    folders = [save(a, tmp_path / f"a{i}", tok) for i, a in enumerate(anchors)]
    loaded, tokenizer = load_anchors(folders)
    assert tokenizer.get_vocab() == tok.get_vocab()
    ids, mask = left_padded_batch()
    with torch.no_grad():
        for a, b in zip(anchors, loaded):
            assert torch.equal(a(ids, attention_mask=mask).logits, b.eval()(ids, attention_mask=mask).logits)


def test_bad_anchor_folders_fail_naming_the_path(tmp_path):
    small = tiny_anchors()[0]
    good = save(small, tmp_path / "small")
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        load_anchors([good, str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*no config.json"):
        load_anchors([good, str(tmp_path / "empty")])
    other = tiny_anchors(seed=1)[1]
    other.resize_token_embeddings(VOCAB + 3)
    other_folder = save(other, tmp_path / "other_vocab")
    with pytest.raises(ValueError, match=f"{good}.*{other_folder}.*different vocabularies"):
        load_anchors([good, other_folder])


def test_different_tokenizers_fail_naming_both_folders(tmp_path):
    small, large = tiny_anchors()
    tok_a = train_tokenizer(make_records(TASKS_A, 20, seed=0), vocab_size=VOCAB + 200)
    tok_b = train_tokenizer(make_records(TASKS_A, 20, seed=0), vocab_size=VOCAB + 190)
    a, b = save(small, tmp_path / "a", tok_a), save(large, tmp_path / "b", tok_b)
    with pytest.raises(ValueError, match=f"{a}.*{b}.*different tokenizers"):
        load_anchors([a, b])


def test_paper_family_sizes_on_the_meta_device():
    table = stitch_table("llama-7b-13b")
    assert list(table.columns[:6]) == ["stitch_id", "front", "end", "j", "k", "layer"]
    assert {"params", "macs", "name"} <= set(table.columns)
    assert len(table) == 33
    assert round(table.params[0] / 1e9, 2) == 6.74 and round(table.params[1] / 1e9, 2) == 13.02
    for target in (8e9, 9e9, 10e9):
        assert (table.params - target).abs().min() < 0.3e9, target
    assert table.params[2:].between(6.9e9, 12.9e9).all()
    # a 4096 -> 5120 stitching layer is 20.98 M: front 21 + end 14 layers (id 22) is ~9.0 B
    assert abs(table.params[22] - 9.0e9) < 0.05e9


def test_stitch_params_and_macs_match_the_modules_on_the_path():
    anchors = tiny_anchors()
    net = StitchedLlama(anchors)
    table = stitch_costs(anchors, ["small", "large"], seq_len=8)
    ids = torch.randint(0, VOCAB, (1, 8))
    for sid in range(net.num_stitches):
        on_path = sum(p.numel() for n, p in net.named_parameters() if net.on_path(n, sid))
        assert table.params[sid] == on_path, sid
        with FlopCounterMode(display=False) as counter:
            net(ids, None, sid)
        assert table.macs[sid] == counter.get_total_flops() // 2 // 8, sid
    assert table.params[0] == sum(p.numel() for p in anchors[0].parameters())


def test_tiny_family_builds_with_the_tokenizer_vocabulary():
    with torch.device("meta"):
        small, large = build_family("tiny", vocab_size=300)
    assert small.config.vocab_size == large.config.vocab_size == 300
    assert small.config.hidden_size == 64 and small.config.num_hidden_layers == 4
    assert large.config.hidden_size == 128 and large.config.num_hidden_layers == 6
