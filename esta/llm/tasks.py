"""The offline instruction suite and its tokenizer (spec §11 "Offline default").

No instruction data and no LLM weights are reachable offline, so the embedded default pretrains two
tiny LLaMA anchors on procedural tasks A over digit strings and adapts the stitches on held-out tasks
B. Every task is a row of data: an instruction and the function that answers it. Records are Alpaca
records, written as Alpaca JSON, so the tiny path reads its data through the same loader as the
paper's. Half of the records (seeded) fold the digits into the instruction, so both Alpaca
templates occur.

The tokenizer is a byte-level BPE trained with HF ``tokenizers`` on the suite's own text (digits
split one per token) and saved as a ``PreTrainedTokenizerFast``: the tiny path runs the code a real
LLaMA tokenizer runs, bos prepended, eos appended by the loader, no pad token (as LLaMA).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from esta.llm.data import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, prompt

__all__ = ["TASKS", "TASKS_A", "TASKS_B", "make_records", "choice_items", "write_alpaca", "train_tokenizer"]


def _add_one(d: str) -> str:
    return str(int(d) + 1)


TASKS: dict[str, tuple[str, Callable[[str], str]]] = {
    "copy": ("Copy the digits.", lambda d: d),
    "reverse": ("Reverse the digits.", lambda d: d[::-1]),
    "sort": ("Sort the digits in ascending order.", lambda d: "".join(sorted(d))),
    "max": ("Give the largest digit.", max),
    "min": ("Give the smallest digit.", min),
    "count": ("Count the digits.", lambda d: str(len(d))),
    "add_one": ("Add one to the number.", _add_one),
    "sort_desc": ("Sort the digits, then reverse them.", lambda d: "".join(sorted(d))[::-1]),  # composite
}
TASKS_A = ("copy", "reverse", "sort", "max", "count")  # pretraining the anchors
TASKS_B = ("min", "add_one", "sort_desc")  # held out: the adaptation task


def make_records(tasks: tuple[str, ...], n: int, seed: int, min_digits: int = 3, max_digits: int = 8) -> list[dict]:
    """``n`` seeded Alpaca records drawn evenly over ``tasks``; each carries its ``task`` name."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown procedural tasks {unknown}; known: {sorted(TASKS)}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        instruction, answer = TASKS[task]
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(min_digits, max_digits)))
        if task == "add_one":
            digits = digits.lstrip("0") or "0"  # a number, not a digit string
        if rng.random() < 0.5:
            rec = dict(instruction=instruction, input=digits, output=answer(digits))
        else:
            rec = dict(instruction=f"{instruction} {digits}", input="", output=answer(digits))
        out.append(dict(rec, task=task))
    return out


def choice_items(records: list[dict], n_choices: int, seed: int) -> list[dict]:
    """Log-likelihood multiple-choice items over Alpaca ``records`` (spec §11 "Metrics", the Open LLM
    Leaderboard's scoring rule): the context is the record's prompt, the choices its reference output
    and ``n_choices - 1`` distinct outputs of other records (of the same procedural ``task`` first, so
    a distractor has the right form; of any task when those run out), in a seeded order; ``label``
    is the reference's index. Too few distinct other outputs is an error naming the record."""
    if n_choices < 2:
        raise ValueError(f"multiple choice needs at least 2 choices, got {n_choices}")
    rng = random.Random(seed)
    items = []
    for i, rec in enumerate(records):
        same = sorted({r["output"] for r in records if r.get("task") == rec.get("task")} - {rec["output"]})
        rest = sorted({r["output"] for r in records} - {rec["output"]} - set(same))
        if len(same) + len(rest) < n_choices - 1:
            raise ValueError(f"record {i}: only {len(same) + len(rest)} other outputs to draw "
                             f"{n_choices - 1} distractors from")
        wanted = n_choices - 1
        picked = rng.sample(same, min(wanted, len(same)))
        choices = picked + rng.sample(rest, wanted - len(picked)) + [rec["output"]]
        rng.shuffle(choices)
        items.append(dict(context=prompt(rec), choices=choices, label=choices.index(rec["output"]),
                          **({"task": rec["task"]} if "task" in rec else {})))
    return items


def write_alpaca(records: list[dict], path: str | Path) -> None:
    """Write records as Alpaca JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(records, indent=1))
    os.replace(tmp, path)


SPECIAL = ("<unk>", "<s>", "</s>")  # LLaMA's; no pad token, as LLaMA


def train_tokenizer(records: list[dict], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the templates and the records' text, digits one token each."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    texts = [PROMPT_WITH_INPUT, PROMPT_NO_INPUT] + [prompt(r) + r["output"] for r in records]
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    # bos first, as LLaMA's tokenizer does; eos is the loader's to append (it ends targets only)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
