"""One stitch as an lm-evaluation-harness model (spec §11 "lm-eval adapter", lm-eval 0.4.x).

``StitchLM(model, tokenizer, stitch_id)`` is a ``lm_eval.api.model.TemplateLM``: lm-eval turns every
task's requests into ``loglikelihood`` (context, continuation) pairs, ``loglikelihood_rolling``
strings and ``generate_until`` (context, gen_kwargs) pairs, and the adapter answers them with the
stitched model's forward and greedy decoding. Any task whose data is on local disk can then score any
stitch, without a registry:

    lm = StitchLM(model, tokenizer, stitch_id)
    lm_eval.simple_evaluate(model=lm, tasks=["my_task"], task_manager=TaskManager(include_path=DIR))

(with ``HF_DATASETS_OFFLINE=1`` and a task YAML over a local file; ``TaskManager(...,
include_defaults=False)`` skips indexing lm-eval's built-in tasks, ~40 s on 2 cores). Token-level scoring is
``esta.llm.evaluate.continuation_logprobs``, the same code as the package's own multiple-choice
scorer. lm-eval is imported only here, so the rest of ``esta`` does not pay for its import.

``write_choice_task`` writes the multiple-choice items of ``esta.llm.tasks.choice_items`` as such a
local task (JSON lines + YAML), and ``score_stitches`` runs ``simple_evaluate`` on exported stitches:
the workflow's ``llm_lm_eval`` rule (config ``llm.lm_eval``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from lm_eval import utils
from lm_eval.api.model import TemplateLM

from esta.llm.evaluate import continuation_logprobs, left_pad
from esta.llm.export import DeployedStitch

__all__ = ["StitchLM", "write_choice_task", "score_stitches"]


class StitchLM(TemplateLM):
    """Stitch ``stitch_id`` of a ``StitchedLlama`` / ``TunableLlama``, or an exported
    ``DeployedStitch`` (no ``stitch_id`` needed), answering lm-eval's requests.

    ``max_length`` (default: the smallest ``max_position_embeddings`` of the anchors) bounds the
    tokens fed per row; longer inputs keep their last tokens, and rolling log-likelihoods are split
    into lm-eval's disjoint windows. ``add_bos``: prepend the tokenizer's special tokens (LLaMA's bos)
    to contexts, as Alpaca training does.
    """

    def __init__(self, model, tokenizer, stitch_id: int | None = None, batch_size: int = 16,
                 max_length: int | None = None, max_gen_toks: int = 256, add_bos: bool = True):
        super().__init__()
        if isinstance(model, DeployedStitch):  # an exported stitch (esta.llm.export.load_stitch)
            if stitch_id not in (None, model.stitch_id):
                raise ValueError(f"StitchLM: the exported model is stitch {model.stitch_id}, not {stitch_id}")
            model, stitch_id = model.net, model.stitch_id
        if stitch_id is None:
            raise ValueError("StitchLM: give the stitch_id of the stitched model to evaluate")
        if stitch_id not in range(model.num_stitches):
            raise ValueError(f"StitchLM: stitch id {stitch_id} is not in 0..{model.num_stitches - 1}")
        if tokenizer.eos_token_id is None:
            raise ValueError("StitchLM: the tokenizer has no eos token")
        self.model, self.tokenizer, self.stitch_id = model, tokenizer, stitch_id
        self.batch_size, self.max_gen_toks, self.add_bos = batch_size, max_gen_toks, add_bos
        anchors = getattr(model, "net", model).anchors  # a TunableLlama wraps its StitchedLlama
        self.max_length = max_length or min(a.config.max_position_embeddings for a in anchors)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        # what an empty context and the first rolling window condition on: bos, as in training
        bos = self.tokenizer.bos_token_id
        return self.eot_token_id if bos is None else bos

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos if add_special_tokens is None else add_special_tokens
        return self.tokenizer(string, add_special_tokens=special)["input_ids"]

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        return continuation_logprobs(self.model, self.stitch_id, pairs, self.batch_size, self.max_length)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in (req.args for req in requests):
            windows = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
                token_list=self.tok_encode(string, add_special_tokens=False), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = continuation_logprobs(self.model, self.stitch_id, windows, self.batch_size, self.max_length)
            out.append(sum(lp for lp, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, stopped at eos and cut before the first ``until`` string."""
        out = []
        for context, gen_kwargs in (req.args for req in requests):
            kwargs = dict(gen_kwargs)
            if kwargs.pop("do_sample", False) or kwargs.pop("temperature", 0.0) > 0:
                raise ValueError(f"StitchLM decodes greedily only; got gen_kwargs {gen_kwargs}")
            until = kwargs.pop("until", None) or [self.tokenizer.decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = kwargs.pop("max_gen_toks", self.max_gen_toks)
            if max_new >= self.max_length:
                raise ValueError(f"StitchLM: max_gen_toks {max_new} leaves no room for a context in "
                                 f"max_length {self.max_length}")
            ctx = self.tok_encode(context)[-(self.max_length - max_new):]  # keep the end, as lm-eval does
            ids, mask = left_pad([ctx], self.eot_token_id)
            device = next(self.model.parameters()).device
            seq = self.model.generate(ids.to(device), mask.to(device), self.stitch_id, max_new,
                                      eos_token_id=self.eot_token_id)[0, ids.shape[1]:].tolist()
            stops = set(self.model.stop_ids(self.stitch_id, self.eot_token_id))  # every eos id ends it
            seq = seq[: next((n for n, t in enumerate(seq) if t in stops), len(seq))]
            text = self.tok_decode(seq)
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            out.append(text)
        return out


def write_choice_task(items: list[dict], folder: str | Path, name: str) -> Path:
    """An lm-eval task ``name`` over multiple-choice ``items`` (``context``, ``choices``, ``label``) in
    ``folder``: ``<name>.jsonl`` and ``<name>.yaml`` (``output_type: multiple_choice``, acc). The
    delimiter is empty, as in ``esta.llm.evaluate.multiple_choice`` for Alpaca prompts, whose
    responses follow "### Response:" directly."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(dict(query=it["context"], choices=it["choices"], gold=it["label"])) + "\n"
                            for it in items))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: query\ndoc_to_choice: choices\n"
        'doc_to_target: gold\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n')
    return folder


def score_stitches(stitches: dict[str, tuple], tasks: list[str], include_path: str | Path,
                   limit: int | None = None, batch_size: int = 16) -> pd.DataFrame:
    """lm-eval scores of each ``(model, tokenizer)`` in ``stitches`` (by label, e.g. exported stitches
    from ``esta.llm.export.load_stitch``) on ``tasks`` found under ``include_path`` (local files only;
    lm-eval's built-in task index is not read). One row per (label, task, metric)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    os.environ["HF_DATASETS_OFFLINE"] = "1"  # nothing is downloaded
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise ValueError(f"llm.lm_eval.tasks {missing} are not tasks under {include_path} "
                         f"(found {sorted(manager.all_tasks)[:8]})")
    rows = []
    for label, (model, tokenizer) in stitches.items():
        out = lm_eval.simple_evaluate(model=StitchLM(model, tokenizer, batch_size=batch_size), tasks=list(tasks),
                                      limit=limit, bootstrap_iters=0, task_manager=manager)
        for task, metrics in out["results"].items():
            for key, value in metrics.items():
                metric, _, _filter = key.partition(",")
                scored = isinstance(value, int | float) and metric not in ("alias", "sample_len")
                if scored and not metric.endswith("_stderr"):
                    rows.append(dict(label=label, task=task, metric=metric, value=float(value)))
    return pd.DataFrame(rows, columns=["label", "task", "metric", "value"])
