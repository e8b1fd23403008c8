"""Alpaca loader, templates, label masking, truncation and the procedural suite (spec §11 "Data")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from esta.llm.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, encode_alpaca, load_alpaca, prompt
from esta.llm.tasks import TASKS, TASKS_A, TASKS_B, make_records, train_tokenizer, write_alpaca

FIXTURE = Path(__file__).parent / "data" / "alpaca_tiny.json"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(make_records(TASKS_A + TASKS_B, 200, seed=0) + load_alpaca(FIXTURE), vocab_size=400)


def test_templates_are_stanford_alpacas_verbatim():
    rec = load_alpaca(FIXTURE)
    assert prompt(rec[0]) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nReverse the digits."
        "\n\n### Input:\n4821\n\n### Response:")
    assert prompt(rec[1]) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nGive the largest digit. 90317\n\n### Response:")
    assert prompt(rec[7]) == PROMPT_NO_INPUT.format(instruction="Add one to the number. 199")  # no "input" key
    assert "{input}" in PROMPT_WITH_INPUT


def test_labels_are_the_response_plus_eos_only(tokenizer):
    records = load_alpaca(FIXTURE)
    data, report = encode_alpaca(records, tokenizer, max_length=256, pad_as_eos=True)
    ids, mask, labels = data.tensors
    assert report.truncated == 0 and report.pad_as_eos and report.pad_token_id == tokenizer.eos_token_id
    for i, r in enumerate(records):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # right padding
        target = labels[i][labels[i] != -100].tolist()
        assert target[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(target[:-1]) == r["output"]
        assert ids[i, 0] == tokenizer.bos_token_id
        first = int((labels[i] != -100).nonzero()[0])
        assert tokenizer.decode(ids[i, 1:first]) == prompt(r)  # everything before the target is the prompt
        assert (labels[i, n:] == -100).all()
    assert report.target_tokens == int((labels != -100).sum())


def test_truncation_is_counted_or_refused_naming_the_record(tokenizer):
    records = load_alpaca(FIXTURE)
    lengths = [len(tokenizer(prompt(r) + r["output"])["input_ids"]) + 1 for r in records]
    cut = sorted(lengths)[4]  # the four longest records exceed it
    data, report = encode_alpaca(records, tokenizer, max_length=cut - 1, pad_as_eos=True)
    assert report.truncated == 4 and report.truncated_records == [i for i, n in enumerate(lengths) if n >= cut]
    assert data.tensors[0].shape[1] == cut - 1
    longest = max(range(len(records)), key=lengths.__getitem__)
    with pytest.raises(ValueError, match=f"record {longest} .*truncation is off"):
        encode_alpaca([records[i] for i in range(longest + 1)], tokenizer, max_length=max(lengths) - 1,
                      truncate=False, pad_as_eos=True, source=str(FIXTURE))


def test_a_tokenizer_without_pad_needs_pad_as_eos(tokenizer):
    assert tokenizer.pad_token_id is None  # as LLaMA's
    with pytest.raises(ValueError, match="no pad token.*pad_as_eos"):
        encode_alpaca(load_alpaca(FIXTURE), tokenizer, max_length=256)


@pytest.mark.parametrize("content, message", [
    ({"instruction": "x", "output": "y"}, "expected a JSON list of records, got a dict"),
    ([{"instruction": "x", "output": "y"}, {"instruction": "x"}], "record 1 has no string 'output'"),
    ([{"input": "a", "output": "y"}], "record 0 has no string 'instruction'"),
])
def test_bad_alpaca_files_name_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        load_alpaca(path)
    assert str(path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_alpaca(tmp_path / "missing.json")


def test_procedural_suite_is_seeded_correct_and_roundtrips(tmp_path, tokenizer):
    a = make_records(TASKS_A, 50, seed=3)
    assert a == make_records(TASKS_A, 50, seed=3) and a != make_records(TASKS_A, 50, seed=4)
    assert not set(TASKS_A) & set(TASKS_B) and {r["task"] for r in a} == set(TASKS_A)
    for r in a + make_records(TASKS_B, 30, seed=3):
        digits = r["input"] or r["instruction"].rsplit(" ", 1)[1]
        assert r["output"] == TASKS[r["task"]][1](digits)
    assert {bool(r["input"]) for r in a} == {True, False}  # both templates occur
    assert TASKS["sort_desc"][1]("3914") == "9431" and TASKS["add_one"][1]("199") == "200"
    write_alpaca(a, tmp_path / "a.json")
    assert [dict(r) for r in load_alpaca(tmp_path / "a.json")] == a
    # the tokenizer is a real PreTrainedTokenizerFast: round trip, one token per digit
    text = prompt(a[0]) + a[0]["output"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer("9081", add_special_tokens=False)["input_ids"]) == list("9081")
    tokenizer.save_pretrained(tmp_path / "tok")
    again = AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
