"""Evaluation of Stitched LLaMA stitches (spec §11 "Metrics"): masked NLL by hand, exact match that
can be forced to 1 and to 0, multiple choice against hand-computed log-likelihoods, samples."""

from __future__ import annotations

import pytest
import torch

from esta.llm.data import encode_alpaca, prompt
from esta.llm.evaluate import (exact_match, greedy_answers, multiple_choice, response_nll, samples,
                               stitch_metrics)
from esta.llm.stitch import StitchedLlama, ls_init
from esta.llm.tasks import TASKS_A, TASKS_B, make_records, train_tokenizer
from esta.llm.tuning import make_tunable

from test_llm_stitch import tiny_anchors

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    records = make_records(TASKS_A + TASKS_B, 40, seed=0)
    tok = train_tokenizer(records, vocab_size=360)
    data, _ = encode_alpaca(records[:8], tok, max_length=128, pad_as_eos=True)
    net = StitchedLlama(tiny_anchors(vocab=len(tok))).eval()
    ls_init(net, [data.tensors[:2]])
    model = make_tunable(net).eval()
    with torch.no_grad():  # non-zero stitch biases: evaluation must see them
        for p in model.biases.parameters():
            p.normal_(0, 0.05)
    return model, tok, records


def test_response_nll_equals_a_hand_computation_from_logits(setup):
    model, tok, records = setup
    rec = records[3]
    data, _ = encode_alpaca([rec], tok, max_length=128, pad_as_eos=True)
    sid = 3
    with torch.no_grad():
        got = response_nll(model, data, sid)
        # by hand: the prompt alone, then each target token (output + eos) predicted from all before it
        n_prompt = len(tok(prompt(rec))["input_ids"])
        seq = tok(prompt(rec) + rec["output"])["input_ids"] + [tok.eos_token_id]
        logp = model(torch.tensor([seq]), None, sid)[0].log_softmax(-1)
        nlls = [-logp[t - 1, seq[t]].item() for t in range(n_prompt, len(seq))]
    assert got["tokens"] == len(nlls) == len(tok(rec["output"], add_special_tokens=False)["input_ids"]) + 1
    assert got["nll"] == pytest.approx(sum(nlls) / len(nlls), abs=1e-5)
    assert got["ppl"] == pytest.approx(torch.tensor(sum(nlls) / len(nlls)).exp().item(), rel=1e-5)
    # the set's NLL is per target token over all records, not a mean of per-record means
    both, _ = encode_alpaca(records[3:5], tok, max_length=128, pad_as_eos=True)
    other, _ = encode_alpaca(records[4:5], tok, max_length=128, pad_as_eos=True)
    a, b = got, response_nll(model, other, sid)
    assert response_nll(model, both, sid, batch_size=1)["nll"] == pytest.approx(
        (a["nll"] * a["tokens"] + b["nll"] * b["tokens"]) / (a["tokens"] + b["tokens"]), abs=1e-5)
    # and it is the training loss of the same batch
    assert got["nll"] == pytest.approx(model.loss(data.tensors, sid).item(), abs=1e-5)


def test_exact_match_is_one_for_forced_references_and_zero_for_wrong_ones(setup):
    model, tok, records = setup
    recs = [dict(r) for r in records[:6]]
    sid = 2
    forced = []
    with torch.no_grad():  # the model's own greedy answers, one unpadded prompt at a time
        for r in recs:
            ids = torch.tensor([tok(prompt(r))["input_ids"]])
            new = model.generate(ids, None, sid, 12, eos_token_id=tok.eos_token_id)[0, ids.shape[1]:].tolist()
            new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
            forced.append(tok.decode(new, skip_special_tokens=True))
    assert len(set(forced)) > 1  # the answers depend on the prompt
    got = exact_match(model, tok, [dict(r, output=a) for r, a in zip(recs, forced)], sid, max_new_tokens=12,
                      batch_size=4)  # left-padded batches of unequal prompts
    assert got["answers"] == forced and got["em"] == 1.0
    wrong = exact_match(model, tok, [dict(r, output=a + "7") for r, a in zip(recs, forced)], sid, max_new_tokens=12)
    assert wrong["em"] == 0.0 and not any(wrong["correct"])
    half = [dict(r, output=a if i % 2 else a + "7") for i, (r, a) in enumerate(zip(recs, forced))]
    assert exact_match(model, tok, half, sid, max_new_tokens=12)["em"] == 0.5


def test_multiple_choice_picks_the_choice_of_highest_hand_computed_loglikelihood(setup):
    model, tok, records = setup
    sid = 4
    items = [dict(context=prompt(r), choices=[r["output"], r["output"][::-1] + "1", "0", "12"], label=0)
             for r in records[:8]]

    def hand(context: str, choice: str) -> float:
        n_ctx = len(tok(context)["input_ids"])
        seq = tok(context + choice)["input_ids"]
        with torch.no_grad():
            logp = model(torch.tensor([seq]), None, sid)[0].log_softmax(-1)
        return sum(logp[t - 1, seq[t]].item() for t in range(n_ctx, len(seq)))

    expected = [[hand(it["context"], c) for c in it["choices"]] for it in items]
    best = [max(range(4), key=ll.__getitem__) for ll in expected]
    got = multiple_choice(model, tok, items, sid, delimiter="", batch_size=5)
    for ll, ref in zip(got["loglikelihoods"], expected):
        assert ll == pytest.approx(ref, abs=1e-4)
    assert got["predictions"] == best
    assert got["acc"] == sum(b == 0 for b in best) / len(items)
    relabelled = [dict(it, label=b) for it, b in zip(items, best)]
    assert multiple_choice(model, tok, relabelled, sid, delimiter="")["acc"] == 1.0
    with pytest.raises(ValueError, match="item 1: label 9"):
        multiple_choice(model, tok, [items[0], dict(items[1], label=9)], sid)


def test_samples_lists_every_stitchs_answer_to_every_prompt(setup):
    model, tok, records = setup
    recs = records[:3]
    table = samples(model, tok, recs, [0, 1, 3], max_new_tokens=8)
    assert list(table.columns) == ["stitch_id", "prompt", "answer"] and len(table) == 9
    for sid in (0, 1, 3):
        rows = table[table.stitch_id == sid]
        assert rows.answer.tolist() == greedy_answers(model, tok, [prompt(r) for r in recs], sid, 8)
    assert table.prompt.iloc[0].startswith(recs[0]["instruction"])
    assert table.groupby("prompt").answer.nunique().max() > 1  # stitches differ: side by side matters


def test_stitch_metrics_tabulates_every_metric_per_stitch(setup):
    model, tok, records = setup
    heldout, _ = encode_alpaca(records[:4], tok, max_length=128, pad_as_eos=True)
    recs = records[:8]  # tasks cycle, so each task has records
    items = [dict(context=prompt(r), choices=[r["output"], "0"], label=0) for r in records[:4]]
    table = stitch_metrics(model, tok, [0, 3], heldout, recs, items, max_new_tokens=6)
    assert table.stitch_id.tolist() == [0, 3]
    tasks = sorted({r["task"] for r in recs})
    assert list(table.columns) == ["stitch_id", "nll", "ppl", "em"] + [f"em_{t}" for t in tasks] + ["mc_acc"]
    row = table.set_index("stitch_id").loc[3]
    assert row.nll == pytest.approx(response_nll(model, heldout, 3)["nll"])
    assert row.mc_acc == multiple_choice(model, tok, items, 3, delimiter="")["acc"]
    em = exact_match(model, tok, recs, 3, max_new_tokens=6)
    assert row.em == em["em"]
    first = tasks[0]
    mine = [ok for r, ok in zip(recs, em["correct"]) if r["task"] == first]
    assert row[f"em_{first}"] == sum(mine) / len(mine)
    assert list(stitch_metrics(model, tok, [1], heldout=heldout).columns) == ["stitch_id", "nll", "ppl"]
