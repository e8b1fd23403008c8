"""Evaluation of Stitched LLaMA stitches (spec §11 "Metrics"; the ViT counterpart is ``esta.vit.evaluate``).

Every function takes a stitched model ``model(input_ids, attention_mask, stitch_id) -> logits`` with
``model.generate(input_ids, attention_mask, stitch_id, max_new_tokens, eos_token_id=...)`` (a
``StitchedLlama`` or a ``TunableLlama``) and one stitch id:

- ``response_nll``: masked next-token NLL and perplexity of held-out Alpaca records, the training
  loss of ``TunableLlama.loss`` (labels -100 on prompt and padding, logits at t predict labels at t+1),
  averaged over all target tokens of the set;
- ``exact_match``: greedy decoding of each Alpaca prompt until eos, compared with the reference output;
- ``multiple_choice``: log-likelihood multiple choice, the Open LLM Leaderboard's rule as
  lm-evaluation-harness scores it: the choice whose continuation ``delimiter + choice`` has the highest
  summed log-probability given the context wins (``acc``, no length normalisation);
- ``samples``: every given stitch's greedy answers to a fixed prompt set, side by side;
- ``stitch_metrics``: the table of all of these per stitch, one row each (exact match also per
  procedural task when the records carry a ``task``), for the Pareto tables and figures.

``check_choices`` refuses, when the workflow is planned, a held-out set too small to give every
multiple-choice item its distractors.

``continuation_logprobs`` is the token-level primitive shared with the lm-eval adapter
(``esta.llm.lm_eval_adapter``), and ``encode_pair`` splits a (context, continuation) text pair into
tokens exactly as lm-eval's ``TemplateLM._encode_pair`` does, so both score the same tokens.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch.utils.data import TensorDataset

from esta.llm.checks import check_choices  # noqa: F401 (torch-free: the DAG build imports it)
from esta.llm.data import prompt

__all__ = [
    "response_nll", "continuation_logprobs", "encode_pair", "multiple_choice", "greedy_answers", "exact_match",
    "samples", "left_pad", "stitch_metrics", "check_choices",
]


@torch.no_grad()
def response_nll(model, data: TensorDataset, stitch_id: int, batch_size: int = 16) -> dict:
    """Mean NLL per target token of ``data`` = ``(input_ids, attention_mask, labels)`` (as
    ``esta.llm.data.encode_alpaca`` builds it) and its perplexity ``exp(nll)``."""
    total, count = 0.0, 0
    ids_all, mask_all, labels_all = data.tensors
    device = next(model.parameters()).device
    for i in range(0, len(ids_all), batch_size):
        ids, mask, labels = (t[i : i + batch_size].to(device) for t in (ids_all, mask_all, labels_all))
        logits = model(ids, mask, stitch_id)[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100,
                                                reduction="sum")
        total += nll.item()
        count += int((target != -100).sum())
    if count == 0:
        raise ValueError("response_nll: the data has no target token (every label is -100)")
    nll = total / count
    return dict(nll=nll, ppl=math.exp(nll), tokens=count)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), lm-eval's rule: trailing spaces of the context move to
    the continuation, the whole text is tokenised once and split after the context's tokens (so a
    merge across the boundary is scored as the model would see it). Empty context: the bos token."""
    if not context:
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return [tokenizer.bos_token_id], cont
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    n_ctx = len(tokenizer(context)["input_ids"])
    return whole[:n_ctx], whole[n_ctx:]


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token rows, left-padded (for generation)."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


@torch.no_grad()
def continuation_logprobs(model, stitch_id: int, pairs: list[tuple[list[int], list[int]]],
                          batch_size: int = 16, max_length: int | None = None) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), is_greedy)`` per ``(context_ids, continuation_ids)``.

    Rows are right-padded (the causal mask makes padding after a row's tokens invisible to it); a row
    longer than ``max_length + 1`` tokens keeps its last ones, as lm-eval truncates from the left.
    ``is_greedy``: every continuation token is the argmax of its position.
    """
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        rows = []
        for ctx, cont in chunk:
            if not cont:
                raise ValueError("continuation_logprobs: a continuation has no tokens")
            whole = (ctx + cont)
            if max_length is not None:
                whole = whole[-(max_length + 1):]
            rows.append(whole[:-1])  # the last token is predicted, never fed
        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
        logp = model(ids.to(device), mask.to(device), stitch_id).float().log_softmax(-1)
        for r, (row, (_, cont)) in enumerate(zip(rows, chunk)):
            n = len(cont)
            lp = logp[r, len(row) - n : len(row)]  # (n, V): positions that predict the continuation
            target = torch.tensor(cont, device=lp.device)
            out.append((lp.gather(-1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())))
    return out


def multiple_choice(model, tokenizer, items: list[dict], stitch_id: int, delimiter: str = " ",
                    batch_size: int = 16) -> dict:
    """Log-likelihood multiple choice over ``items`` of ``{"context", "choices", "label"}``.

    Returns ``acc`` (mean of argmax == label), the per-item ``predictions`` and per-choice
    ``loglikelihoods``. ``delimiter`` sits between context and choice (lm-eval's ``target_delimiter``,
    " " by default; "" for Alpaca prompts, whose responses follow "### Response:" directly).
    """
    for i, item in enumerate(items):
        for key in ("context", "choices", "label"):
            if key not in item:
                raise ValueError(f"multiple-choice item {i} has no {key!r}")
        if not 0 <= item["label"] < len(item["choices"]):
            raise ValueError(f"multiple-choice item {i}: label {item['label']} is not an index of its "
                             f"{len(item['choices'])} choices")
    pairs = [encode_pair(tokenizer, it["context"], delimiter + c) for it in items for c in it["choices"]]
    scores = iter(lp for lp, _ in continuation_logprobs(model, stitch_id, pairs, batch_size))
    lls = [[next(scores) for _ in it["choices"]] for it in items]
    preds = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    acc = sum(p == it["label"] for p, it in zip(preds, items)) / len(items)
    return dict(acc=acc, predictions=preds, loglikelihoods=lls)


@torch.no_grad()
def greedy_answers(model, tokenizer, texts: list[str], stitch_id: int, max_new_tokens: int = 32,
                   batch_size: int = 16) -> list[str]:
    """Greedy continuations of ``texts`` (tokenised with the tokenizer's special tokens, i.e. bos),
    decoded up to the first stop id (the tokenizer's eos or any eos id of the generation config)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("greedy_answers: the tokenizer has no eos token to stop at")
    stops = set(model.stop_ids(stitch_id, eos))
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id  # masked out: any id does
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        rows = [tokenizer(t)["input_ids"] for t in texts[i : i + batch_size]]
        ids, mask = left_pad(rows, pad)
        seq = model.generate(ids.to(device), mask.to(device), stitch_id, max_new_tokens, eos_token_id=eos)
        for new in seq[:, ids.shape[1]:].tolist():
            end = next((n for n, t in enumerate(new) if t in stops), len(new))
            out.append(tokenizer.decode(new[:end], skip_special_tokens=True))
    return out


def exact_match(model, tokenizer, records: list[dict], stitch_id: int, max_new_tokens: int = 32,
                batch_size: int = 16) -> dict:
    """Greedy exact match of Alpaca ``records``: the answer to ``prompt(record)``, stripped, equals
    ``record["output"]`` stripped. Returns ``em`` and the per-record ``answers`` and ``correct``."""
    answers = greedy_answers(model, tokenizer, [prompt(r) for r in records], stitch_id, max_new_tokens, batch_size)
    correct = [a.strip() == r["output"].strip() for a, r in zip(answers, records)]
    return dict(em=sum(correct) / len(records), answers=answers, correct=correct)


def samples(model, tokenizer, records: list[dict], stitch_ids: list[int], max_new_tokens: int = 64) -> pd.DataFrame:
    """Every stitch's greedy answer to every Alpaca prompt of ``records``: columns stitch_id, prompt
    (the instruction, then the input on its own line when there is one), answer."""
    shown = [r["instruction"] + (f"\n{r['input']}" if r.get("input") else "") for r in records]
    rows = []
    for sid in stitch_ids:
        answers = greedy_answers(model, tokenizer, [prompt(r) for r in records], sid, max_new_tokens)
        rows += [dict(stitch_id=sid, prompt=p, answer=a) for p, a in zip(shown, answers)]
    return pd.DataFrame(rows, columns=["stitch_id", "prompt", "answer"])


def stitch_metrics(model, tokenizer, stitch_ids: list[int], heldout: TensorDataset | None = None,
                   em_records: list[dict] | None = None, mc_items: list[dict] | None = None,
                   mc_delimiter: str = "", max_new_tokens: int = 32, batch_size: int = 16) -> pd.DataFrame:
    """One row per stitch: ``nll``, ``ppl`` (of ``heldout``), ``em`` and ``em_<task>`` (of
    ``em_records``), ``mc_acc`` (of ``mc_items``); a metric whose data is None is left out."""
    rows = []
    for sid in stitch_ids:
        row = dict(stitch_id=sid)
        if heldout is not None:
            nll = response_nll(model, heldout, sid, batch_size)
            row.update(nll=nll["nll"], ppl=nll["ppl"])
        if em_records is not None:
            got = exact_match(model, tokenizer, em_records, sid, max_new_tokens, batch_size)
            row["em"] = got["em"]
            by_task: dict[str, list[bool]] = {}
            for r, ok in zip(em_records, got["correct"]):
                if "task" in r:
                    by_task.setdefault(r["task"], []).append(ok)
            row.update({f"em_{t}": sum(v) / len(v) for t, v in sorted(by_task.items())})
        if mc_items is not None:
            row["mc_acc"] = multiple_choice(model, tokenizer, mc_items, sid, mc_delimiter, batch_size)["acc"]
        rows.append(row)
    return pd.DataFrame(rows)
