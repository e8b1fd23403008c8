"""LLaMA-architecture anchors: a family table, local loading and the same-tokenizer check (spec §11).

A family is a row of data, as in nanoGPT's model table: each anchor is a name and the
``transformers.LlamaConfig`` keyword arguments that shape it, smaller anchor first. ``transformers``
builds every anchor (``LlamaForCausalLM``), the paper's LLaMA-7B/13B as well as the tiny pair of the
embedded default; there is no second LLaMA implementation here.

Weights come only from local HF folders (``from_pretrained(path, local_files_only=True)``); nothing
is ever downloaded. Stitching needs one token space, so anchors whose vocabularies or tokenizers
differ are refused with an error naming both folders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from esta.llm.checks import _folder_configs, check_folders  # noqa: F401 (torch-free: the DAG build imports them)
from esta.stitches import enumerate_stitches

__all__ = ["LlamaSpec", "FAMILIES", "family", "build_family", "load_anchors", "check_same_vocab", "check_rule",
           "check_folders"]


@dataclass(frozen=True)
class LlamaSpec:
    """One anchor: a short name for tables and the ``LlamaConfig`` kwargs that shape it."""

    name: str
    config: dict = field(default_factory=dict)

    def llama_config(self) -> LlamaConfig:
        return LlamaConfig(**self.config)


def _llama(hidden: int, layers: int, heads: int, ffn: int, vocab: int, context: int) -> dict:
    # Untied embeddings, as in LLaMA-1/2 (the spec's 6.74 B / 13.02 B counts assume it).
    return dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, intermediate_size=ffn, max_position_embeddings=context,
        tie_word_embeddings=False, rms_norm_eps=1e-6,
    )


FAMILIES: dict[str, tuple[LlamaSpec, ...]] = {
    # The paper's pair: 32 x 4096 (FFN 11008) and 40 x 5120 (FFN 13824), head_dim 128, vocab 32,000.
    "llama-7b-13b": (
        LlamaSpec("LLaMA-7B", _llama(4096, 32, 32, 11008, 32000, 2048)),
        LlamaSpec("LLaMA-13B", _llama(5120, 40, 40, 13824, 32000, 2048)),
    ),
    # The embedded default: head_dim 16, FFN about 2.7x as in LLaMA; the vocabulary is the procedural
    # tokenizer's (esta.llm.tasks), so a folder-free run must pass its size.
    "tiny": (
        LlamaSpec("Tiny-64x4", _llama(64, 4, 4, 172, 512, 256)),
        LlamaSpec("Tiny-128x6", _llama(128, 6, 8, 344, 512, 256)),
    ),
}


def family(name: str) -> tuple[LlamaSpec, ...]:
    """The anchor specs of a family, small to large; an unknown name lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown LLM family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def build_family(name: str, vocab_size: int | None = None, seed: int = 0) -> list[LlamaForCausalLM]:
    """Randomly initialised anchors of a family (built on the current default device, so
    ``with torch.device("meta"):`` gives weightless models for counting). ``vocab_size`` overrides the
    table's, e.g. with the size of a freshly trained tokenizer."""
    torch.manual_seed(seed)
    out = []
    for spec in family(name):
        cfg = dict(spec.config, **({} if vocab_size is None else dict(vocab_size=vocab_size)))
        out.append(LlamaForCausalLM(LlamaConfig(**cfg)))
    return out


def check_rule(family_name: str, rule: str, folders: list[str | Path] | None = None) -> None:
    """Refuse a stitch ``rule`` the anchors cannot take (config ``llm.rule``), before any job: the
    depths and widths come from the folders' ``config.json`` when given (a missing one is left to
    the job that loads it), else from the family table."""
    if folders is not None:
        shapes = _folder_configs(folders)
        if shapes is None:
            return
        where = f"anchor folders {[str(f) for f in folders]}"
    else:
        shapes = [spec.config for spec in family(family_name)]
        where = f"LLM family {family_name!r}"
    try:
        enumerate_stitches([c["num_hidden_layers"] for c in shapes], [c["hidden_size"] for c in shapes], rule)
    except ValueError as err:
        raise ValueError(f"config llm.rule = {rule!r} does not fit the {where}: {err}") from None


def _tokenizer_files(folder: Path) -> bool:
    return any((folder / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"))


def check_same_vocab(anchors: list[LlamaForCausalLM], tokenizers: list, folders: list[str]) -> None:
    """Refuse anchors that do not share one token space; the error names both folders."""
    for a in range(1, len(anchors)):
        first, other = folders[0], folders[a]
        v0, v1 = anchors[0].config.vocab_size, anchors[a].config.vocab_size
        if v0 != v1:
            raise ValueError(f"anchors {first!r} and {other!r} have different vocabularies: vocab_size {v0} vs {v1}")
        t0, t1 = tokenizers[0], tokenizers[a]
        if (t0 is None) != (t1 is None):
            has, lacks = (first, other) if t1 is None else (other, first)
            raise ValueError(f"anchor {has!r} has a tokenizer but {lacks!r} has none; they must share one")
        if t0 is not None and t0.get_vocab() != t1.get_vocab():
            diff = len(set(t0.get_vocab().items()) ^ set(t1.get_vocab().items()))
            raise ValueError(f"anchors {first!r} and {other!r} have different tokenizers "
                             f"({diff} vocabulary entries differ)")


def load_anchors(
    folders: list[str | Path], dtype: torch.dtype = torch.float32
) -> tuple[list[LlamaForCausalLM], PreTrainedTokenizerBase | None]:
    """Load anchors from local HF folders (smaller first) and their shared tokenizer (None when the
    folders hold none). A missing folder or ``config.json`` fails naming the path and the layout."""
    models, tokenizers = [], []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"anchor folder {str(folder)!r} does not exist; expected a Hugging Face "
                                    "model folder (config.json, model.safetensors or shards, tokenizer files)")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"anchor folder {str(folder)!r} has no config.json; expected a Hugging Face "
                                    "model folder as written by save_pretrained")
        models.append(LlamaForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype))
        has_tokenizer = _tokenizer_files(folder)
        tokenizers.append(AutoTokenizer.from_pretrained(folder, local_files_only=True) if has_tokenizer else None)
    check_same_vocab(models, tokenizers, [str(f) for f in folders])
    widths = [m.config.hidden_size for m in models]
    if widths != sorted(widths):
        raise ValueError(f"anchors must be ordered small to large; widths of {[str(f) for f in folders]} are {widths}")
    return models, tokenizers[0]
