"""The lm-eval adapter (spec §11): a local multiple-choice task over a JSONL fixture, scored offline by
``lm_eval.simple_evaluate``, gives the same per-choice log-likelihoods and accuracy as the package's
own scorer; rolling log-likelihood and generation agree with hand computations, for the stitched
model and for the stitch exported from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from esta.llm.evaluate import greedy_answers, multiple_choice
from esta.llm.stitch import StitchedLlama
from esta.llm.tasks import TASKS_A, TASKS_B, make_records, train_tokenizer
from esta.llm.tuning import make_tunable

from test_llm_stitch import tiny_anchors

torch.set_num_threads(1)
FIXTURE = Path(__file__).parent / "data" / "digits_mc.jsonl"
STITCH = 3  # a real stitch: front layers 0..1 -> end layers 3..5


@pytest.fixture(scope="module")
def lm():
    from esta.llm.lm_eval_adapter import StitchLM

    tok = train_tokenizer(make_records(TASKS_A + TASKS_B, 40, seed=0), vocab_size=360)
    model = make_tunable(StitchedLlama(tiny_anchors(vocab=len(tok)))).eval()
    with torch.no_grad():
        for p in model.biases[STITCH]:
            p.normal_(0, 0.1)
    return StitchLM(model, tok, STITCH, batch_size=8)


def test_simple_evaluate_on_a_local_task_matches_our_multiple_choice_scorer(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    import lm_eval
    from lm_eval.tasks import TaskManager

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "digits_mc.yaml").write_text(f"""\
task: esta_digits_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {FIXTURE}
test_split: test
output_type: multiple_choice
doc_to_text: query
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
""")
    # include_defaults=False: indexing lm-eval's thousands of built-in task YAMLs takes ~40 s here
    tasks = TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=["esta_digits_mc"], log_samples=True, bootstrap_iters=0,
                                  task_manager=tasks)
    docs = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    items = [dict(context=d["query"], choices=d["choices"], label=d["gold"]) for d in docs]
    ours = multiple_choice(lm.model, lm.tokenizer, items, STITCH, delimiter="")
    theirs = sorted(out["samples"]["esta_digits_mc"], key=lambda s: s["doc_id"])
    assert len(theirs) == len(docs)
    for sample, ll in zip(theirs, ours["loglikelihoods"]):
        assert [r[0] for r in sample["filtered_resps"]] == pytest.approx(ll, abs=1e-4)
    assert out["results"]["esta_digits_mc"]["acc,none"] == pytest.approx(ours["acc"])
    assert len(set(ours["predictions"])) > 1  # the model's picks depend on the item


def test_rolling_loglikelihood_and_generation_agree_with_hand_computations(lm, tmp_path):
    from lm_eval.api.instance import Instance

    text = "Reverse the digits. 4821"
    ids = [lm.tokenizer.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids]), None, STITCH)[0].log_softmax(-1)
    hand = sum(logp[t - 1, ids[t]].item() for t in range(1, len(ids)))
    req = Instance("loglikelihood_rolling", {}, (text,), 0)
    assert lm.loglikelihood_rolling([req])[0] == pytest.approx(hand, abs=1e-4)
    # with a short window each token is still predicted once, from less context: a different number
    short = type(lm)(lm.model, lm.tokenizer, STITCH, max_length=4)
    assert abs(short.loglikelihood_rolling([req])[0] - hand) > 1e-3

    contexts = ["Give the smallest digit. 5093\n\n### Response:", "Copy the digits.\n\n### Response:"]
    free = greedy_answers(lm.model, lm.tokenizer, contexts, STITCH, max_new_tokens=10)
    reqs = [Instance("generate_until", {}, (c, dict(until=[], max_gen_toks=10)), i) for i, c in enumerate(contexts)]
    assert lm.generate_until(reqs) == free
    stop = free[0][2:4]
    assert stop  # cut before the first `until` string
    cut = lm.generate_until([Instance("generate_until", {}, (contexts[0], dict(until=[stop], max_gen_toks=10)), 0)])
    assert cut == [free[0].split(stop)[0]]
    # an exported stitch answers the same
    from esta.llm.export import export_stitch, load_stitch

    deployed, tok = load_stitch(export_stitch(lm.model, STITCH, tmp_path / "exported", tokenizer=lm.tokenizer))
    exported = type(lm)(deployed, tok)
    assert exported.loglikelihood_rolling([req])[0] == pytest.approx(hand, abs=1e-4)
    assert exported.generate_until(reqs) == free
    with pytest.raises(ValueError, match="greedily"):
        lm.generate_until([Instance("generate_until", {}, (contexts[0], dict(do_sample=True)), 0)])
