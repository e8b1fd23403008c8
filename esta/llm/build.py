"""Stitched LLaMA from workflow artifacts: data sets, anchors, stitching layers and trained state
(spec §11; the ViT counterpart is ``esta.vit.build``).

The workflow keeps each stage's output as a file: the tokenizer and the Alpaca JSON splits
(``llm_prepare``), the anchors as HF folders (pretrained by the workflow or the user's own), the
LS-initialised stitching layers and the trained PST state as safetensors. These functions put them
back together; every missing file is an error naming the config key it comes from.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from esta.llm import tasks
from esta.llm.anchors import load_anchors
from esta.llm.costs import stitch_costs
from esta.llm.data import encode_alpaca, load_alpaca
from esta.llm.evaluate import stitch_metrics
from esta.llm.stitch import StitchedLlama
from esta.llm.tuning import LlamaTuningConfig, TunableLlama, make_tunable
from esta.tensors import copy_into, load_tensors_file, load_trainable

__all__ = ["DTYPES", "suite", "split_alpaca", "load_tokenizer", "encode", "tuning_config", "stitched",
           "stitch_layer_state", "assemble", "cost_table", "evaluate", "require"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def require(path: str | Path | None, key: str, what: str) -> Path:
    """``path`` as a Path, or an error naming the config ``key`` that should point at ``what``."""
    if path is None:
        raise ValueError(f"config {key} is null; set it to {what}")
    if not Path(path).exists():
        raise FileNotFoundError(f"config {key} = {str(path)!r} does not exist; expected {what}")
    return Path(path)


def suite(cfg: dict) -> dict[str, list[dict]]:
    """The procedural instruction suite of ``llm.suite``: tasks A (anchor pretraining) and tasks B
    (adaptation), each a train and a held-out split drawn with distinct seeds."""
    s, kw = cfg["seed"], dict(min_digits=cfg["min_digits"], max_digits=cfg["max_digits"])
    return dict(
        pretrain_train=tasks.make_records(tasks.TASKS_A, cfg["n_pretrain"], s, **kw),
        pretrain_test=tasks.make_records(tasks.TASKS_A, cfg["n_test"], s + 1, **kw),
        train=tasks.make_records(tasks.TASKS_B, cfg["n_train"], s + 2, **kw),
        test=tasks.make_records(tasks.TASKS_B, cfg["n_test"], s + 3, **kw),
    )


def split_alpaca(path: str | Path, n_test: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded (train, held-out) split of an Alpaca JSON file, ``n_test`` records held out."""
    records = load_alpaca(path)
    if not 0 < n_test < len(records):
        raise ValueError(f"{path}: {len(records)} records cannot give {n_test} held-out ones (llm.suite.n_test)")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order[n_test:]], [records[i] for i in order[:n_test]]


def load_tokenizer(folder: str | Path):
    folder = Path(folder)
    if not (folder / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no tokenizer (tokenizer_config.json); written by llm_prepare")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def encode(records: list[dict], tokenizer, tok_cfg: dict, source: str):
    """``esta.llm.data.encode_alpaca`` with the ``llm.tokenizer`` settings."""
    return encode_alpaca(records, tokenizer, tok_cfg["max_length"], truncate=tok_cfg["truncate"],
                         pad_as_eos=tok_cfg["pad_as_eos"], source=source)


def tuning_config(pst: dict) -> LlamaTuningConfig:
    return LlamaTuningConfig(rank=pst["rank"], alpha=pst["alpha"], dropout=pst["dropout"],
                             targets=tuple(pst["targets"]), stitch_biases=pst["stitch_biases"])


def stitch_layer_state(net: StitchedLlama) -> dict[str, torch.Tensor]:
    """The stitching layers' weights and biases by ``StitchedLlama`` name (what LS init sets)."""
    return {f"stitch_layers.{n}": p.detach() for n, p in net.stitch_layers.named_parameters()}


def stitched(folders: list[str | Path], dtype: str = "fp32", checkpointing: bool = False,
             stitch_init: str | Path | None = None, anchors: list[int] | None = None,
             rule: str = "depth") -> tuple[StitchedLlama, object]:
    """The stitched model of HF anchor folders (``anchors`` picks some, e.g. one for the
    anchor-alone baseline) and their tokenizer, stitched by ``rule`` (config ``llm.rule``);
    ``stitch_init`` loads LS-initialised layers."""
    chosen = [folders[i] for i in (anchors if anchors is not None else range(len(folders)))]
    models, tokenizer = load_anchors(chosen, DTYPES[dtype])
    net = StitchedLlama(models, rule=rule, checkpointing=checkpointing)
    if stitch_init is not None:
        copy_into(stitch_layer_state(net), load_tensors_file(stitch_init)[0], stitch_init,
                  f"the stitching layers of anchors {[str(f) for f in chosen]}")
    return net, tokenizer


def assemble(net: StitchedLlama, pst: dict, state: str | Path | None = None) -> TunableLlama:
    """PST on ``net`` (``llm.pst``), with the trained state of ``state`` when given."""
    model = make_tunable(net, tuning_config(pst))
    if state is not None:
        load_trainable(model, load_tensors_file(state)[0], state)
    return model


def cost_table(folders: list[str | Path], names: list[str] | None = None, seq_len: int = 512,
               rule: str = "depth") -> pd.DataFrame:
    """Parameters and per-token MACs of every stitch of the anchors in ``folders`` under ``rule``,
    counted on meta-device copies built from their ``config.json`` (no weights are read)."""
    configs = [LlamaConfig.from_pretrained(f, local_files_only=True) for f in folders]
    with torch.device("meta"):
        models = [LlamaForCausalLM(c) for c in configs]
    names = names or [Path(f).name for f in folders]
    return stitch_costs(models, names, rule=rule, seq_len=seq_len)


def evaluate(model, tokenizer, stitch_ids: list[int], test: list[dict], tok_cfg: dict, eval_cfg: dict,
             mc_items: list[dict] | None = None) -> pd.DataFrame:
    """``esta.llm.evaluate.stitch_metrics`` of held-out records: NLL/ppl over all of them, greedy
    exact match over the first ``llm.eval.n_em`` (none for 0), log-likelihood multiple-choice
    accuracy ``mc_acc`` over ``mc_items`` (``esta.llm.tasks.choice_items``) when given."""
    heldout, _ = encode(test, tokenizer, tok_cfg, "held-out records")
    model.eval()
    em = test[: eval_cfg["n_em"]] or None  # n_em 0: NLL only
    return stitch_metrics(model, tokenizer, stitch_ids, heldout=heldout, em_records=em, mc_items=mc_items,
                          max_new_tokens=eval_cfg["max_new_tokens"], batch_size=eval_cfg["batch_size"])
