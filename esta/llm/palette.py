"""The Stitched LLaMA part of the palette (spec §11, §12; ``esta.palette`` is the family-agnostic part,
``esta.vit.palette`` the ViT counterpart).

A Stitched LLaMA palette stores the trained ``TunableLlama``'s task tensors: the shared LoRA, the
stitch biases and the stitching layers (LS-fitted on the task's tokens, frozen under PST), in fp32
(the precision policy's master weights), plus the tokenizer; the two anchors are HF folders named by
the sha256 of every file in them. Loading rebuilds the model as the workflow's ``esta.llm.build`` does
and readies it for serving (``TunableLlama.for_inference``: LoRA merged once, a stitch's biases copied
into its linears on ``select``), so prefill and every decoded token call the modules directly, as the
export does. The budget is a stitch's parameter count (``max_params``); ``generate`` answers greedily.

A stitch is not a ``transformers`` architecture: its layers come from two models of different width
and depth, joined by a linear no LLaMA config describes. Its export (``esta.llm.export``) is therefore a
self-describing folder -- ``model.safetensors`` under ``StitchedLlama`` names, ``stitch_config.json``
with both anchors' ``LlamaConfig`` and the stitch, the tokenizer -- that ``esta.llm.export.load_stitch``
rebuilds from ``transformers``' own LLaMA modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from esta.llm.build import assemble, load_tokenizer, stitched, tuning_config
from esta.llm.tuning import TunableLlama
from esta.palette import TENSORS, Palette, PaletteError, anchor_record, task_tensors, write_palette
from esta.tensors import copy_into, load_tensors_file
from esta.trust import check_files, listing, validate

__all__ = ["KIND", "load", "check_meta", "write", "write_run", "load_model", "forward", "generate", "export", "example_inputs", "TOKENIZER"]

KIND = "llm"
SCHEMA = Path(__file__).with_name("palette.schema.json")  # the family's keys (package data)
TOKENIZER = "tokenizer"


def load(path: str | Path, anchors=None, device: str = "cpu", verify: bool = False) -> Palette:
    """``esta.palette.Palette.load`` of a Stitched LLaMA palette."""
    return Palette.load(path, sys.modules[__name__], anchors, device, verify)


def check_meta(meta: dict, where: Path) -> None:
    """Refuse, naming the field, an LLM ``palette.json`` that does not describe a buildable model
    (the family's schema, then ``LlamaTuningConfig``'s own checks) -- before transformers sees anything."""
    validate(meta, SCHEMA, where)
    try:
        tuning_config(meta["pst"])
    except (KeyError, TypeError, ValueError) as err:
        raise PaletteError(f"{where}: field pst: {err}") from err


def write(out: str | Path, model: TunableLlama, table: pd.DataFrame, *, folders: list[str | Path], dtype: str,
          rule: str, pst: dict, tokenizer: str | Path, settings: dict) -> Path:
    """Write the palette folder of a trained Stitched LLaMA: task tensors, table, the tokenizer files
    (``tokenizer/``) and the anchor folders by name and the sha256 of every file in them
    (``settings``: what else to record)."""
    import shutil

    out = Path(out)
    records = [anchor_record(f"anchor{i}", f, out) for i, f in enumerate(folders)]
    meta = dict(kind=KIND, method="esta", dtype=dtype, rule=rule, pst=pst, anchors=records,
                macs_unit="token", serving="shared adapters merged", **settings)

    def copy_tokenizer(tmp: Path) -> list[str]:
        shutil.copytree(tokenizer, tmp / TOKENIZER, ignore=shutil.ignore_patterns(".*"))
        return [f"{TOKENIZER}/{n}" for n in listing(tmp / TOKENIZER)]

    return write_palette(out, task_tensors(model), meta, table, extra=copy_tokenizer)


def write_run(out: str | Path, inp, p, w) -> Path:
    """The workflow's ``llm_palette`` job (rule inputs ``inp``, params ``p``, wildcards ``w``): the
    trained Stitched LLaMA rebuilt as the run left it, the stitch table (exact match on the held-out
    records as the measured accuracy of the deployed stitches), the tokenizer and the anchors by
    sha256; no latency yet (``llm_palette_latency`` measures it on the palette itself)."""
    from esta import runtime
    from esta.palette import stitch_table
    from esta.tensors import read_meta

    net, _ = stitched(p.folders, p.dtype, stitch_init=inp.stitch, rule=p.stitch_rule)
    model = assemble(net, p.pst, inp.model)
    test = pd.read_csv(inp.metrics).rename(columns={"em": "test_accuracy"})
    table = stitch_table(pd.read_csv(inp.stitches), pd.read_csv(inp.deployed), None, test)
    settings = dict(variant=w.variant, seed=int(w.seed), test_accuracy="exact match, held-out records",
                    training=read_meta(inp.model), provenance=runtime.provenance())
    return write(out, model, table, folders=p.folders, dtype=p.dtype, rule=p.stitch_rule, pst=p.pst,
                 tokenizer=inp.tokenizer, settings=settings)


def load_model(folder: Path, meta: dict, anchors: list[Path], device: str = "cpu") -> TunableLlama:
    """Anchors -> stitched by the palette's rule -> PST -> the palette's tensors copied in. The
    tokenizer folder must hold only the files the palette lists (their digests are checked already)."""
    tok = {k.removeprefix(f"{TOKENIZER}/"): v for k, v in meta["files"].items() if k.startswith(f"{TOKENIZER}/")}
    check_files(tok, folder / TOKENIZER, f"files/{TOKENIZER}", complete=True)
    net, _ = stitched(anchors, meta["dtype"], rule=meta["rule"])
    model = assemble(net, meta["pst"])
    params = dict(model.named_parameters())
    targets = {k: params[k] for k in task_tensors(model)}
    copy_into(targets, load_tensors_file(folder / TENSORS)[0], folder / TENSORS, "the Stitched LLaMA of its anchors")
    return model.to(device)


def forward(model: TunableLlama, stitch_id: int, input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of one stitch."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return model(input_ids.to(device), None if attention_mask is None else attention_mask.to(device), stitch_id)


def example_inputs(palette, batch: int, generator: torch.Generator, seq_len: int = 64) -> tuple[torch.Tensor, ...]:
    """Random token ids (B, seq_len) and an all-ones mask (``esta.profile``: a prefill of seq_len tokens)."""
    vocab = palette.model.net.anchors[0].config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=generator)
    return ids, torch.ones_like(ids)


def generate(palette, prompts: list[str], max_new_tokens: int, template: bool) -> list[str]:
    """Greedy answers of the active stitch, each prompt as the instruction of the Alpaca template
    (spec §11) unless ``template`` is false."""
    from esta.llm.data import prompt
    from esta.llm.evaluate import greedy_answers

    tokenizer = load_tokenizer(palette.path / TOKENIZER)
    texts = [prompt(dict(instruction=p, input="")) if template else p for p in prompts]
    return greedy_answers(palette.model, tokenizer, texts, palette.stitch_id, max_new_tokens)


def export(palette, stitch_id: int, out_dir: Path) -> Path:
    """``esta.llm.export.export_stitch`` of one stitch into ``<out_dir>/stitch<id>``, as ``llm_export`` does."""
    from esta.llm.export import export_stitch

    meta = palette.meta
    row = palette.table.set_index("stitch_id").loc[stitch_id]
    extra = dict(seed=meta.get("seed"), variant=meta.get("variant"), pst=meta["pst"], importance=row["score"],
                 reason=row.get("reason"), palette=str(palette.path))
    tokenizer = load_tokenizer(palette.path / TOKENIZER)
    return export_stitch(palette.model, stitch_id, Path(out_dir) / f"stitch{stitch_id}", tokenizer, extra)
