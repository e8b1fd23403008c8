"""Alpaca-format instruction data for Stitched LLaMA (spec §11 "Data").

A data file is a JSON list of ``{"instruction", "input", "output"}`` records (``input`` optional or
empty). The prompt is one of the two Stanford Alpaca templates; the target is ``output`` + eos. The
loss is only on the target: labels are -100 on the prompt and on padding, and the model shifts them
by one (logits at t predict labels at t + 1). Rows are right-padded to the longest in the set.
Examples longer than ``max_length`` are cut (the cuts are counted and reported) or, with truncation
off, refused naming the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

__all__ = ["PROMPT_WITH_INPUT", "PROMPT_NO_INPUT", "prompt", "load_alpaca", "encode_alpaca", "EncodeReport", "pad_id"]

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def prompt(record: dict) -> str:
    """The Alpaca prompt of a record: the with-input template when ``input`` is non-empty."""
    template = PROMPT_WITH_INPUT if record.get("input") else PROMPT_NO_INPUT
    return template.format(instruction=record["instruction"], input=record.get("input", ""))


def load_alpaca(path: str | Path) -> list[dict]:
    """Read and check an Alpaca JSON file; errors name the file and the record index."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Alpaca data file {str(path)!r} does not exist; expected a JSON list of "
                                '{"instruction", "input", "output"} records')
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got a {type(records).__name__}")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{path}: record {i} is a {type(r).__name__}, expected an object")
        for key in ("instruction", "output"):
            if not isinstance(r.get(key), str):
                raise ValueError(f"{path}: record {i} has no string {key!r}")
        if not isinstance(r.get("input", ""), str):
            raise ValueError(f"{path}: record {i} has a non-string 'input'")
    return records


def pad_id(tokenizer, pad_as_eos: bool = False) -> int:
    """The padding id; LLaMA's tokenizer has none, and eos stands in only when asked to."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if not pad_as_eos:
        raise ValueError("the tokenizer has no pad token; set pad_as_eos: true to pad with eos "
                         f"({tokenizer.eos_token!r}), which is recorded with the data")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return tokenizer.eos_token_id


@dataclass
class EncodeReport:
    """What encoding did to the data: recorded beside every run that uses it."""

    examples: int
    max_length: int
    length: int  # padded length of the rows
    truncated: int = 0
    truncated_records: list[int] = field(default_factory=list)
    no_target: int = 0  # truncated inside the prompt: no token left to learn from
    pad_token_id: int = 0
    pad_as_eos: bool = False
    target_tokens: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def encode_alpaca(records: list[dict], tokenizer, max_length: int, truncate: bool = True,
                  pad_as_eos: bool = False, source: str = "records") -> tuple[TensorDataset, EncodeReport]:
    """Tokenise records into ``(input_ids, attention_mask, labels)``, right-padded.

    As Stanford Alpaca does, prompt + output is tokenised as one text (with the tokenizer's special
    tokens, e.g. LLaMA's bos) followed by eos, and the first ``len(tokenize(prompt))`` labels are
    masked. ``source`` names the data in errors.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: targets end with eos")
    pad = pad_id(tokenizer, pad_as_eos)
    report = EncodeReport(len(records), max_length, 0, pad_token_id=pad,
                          pad_as_eos=tokenizer.pad_token_id is None and pad_as_eos)
    rows = []
    for i, r in enumerate(records):
        p = prompt(r)
        n_prompt = len(tokenizer(p)["input_ids"])
        ids = tokenizer(p + r["output"])["input_ids"] + [tokenizer.eos_token_id]
        if len(ids) > max_length:
            if not truncate:
                raise ValueError(f"{source}: record {i} is {len(ids)} tokens, longer than max_length "
                                 f"{max_length}, and truncation is off")
            ids = ids[:max_length]
            report.truncated += 1
            report.truncated_records.append(i)
            report.no_target += n_prompt >= max_length
        rows.append((ids, n_prompt))
    length = max(len(ids) for ids, _ in rows)
    report.length = length
    input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = input_ids[i, n_prompt : len(ids)]
    report.target_tokens = int((labels != -100).sum())
    return TensorDataset(input_ids, mask, labels), report
