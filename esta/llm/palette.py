"""The Stitched LLaMA part of the palette (spec §11, §12; ``esta.palette`` is the family-agnostic part,
``esta.vit.palette`` the ViT counterpart).

A Stitched LLaMA palette stores the trained ``TunableLlama``'s task tensors: the shared LoRA, the
stitch biases and the stitching layers (LS-fitted on the task's tokens, frozen under PST), in fp32
(the precision policy's master weights), plus the tokenizer; the two anchors are HF folders named by
their files' sha256. Loading rebuilds the model as the workflow's ``esta.llm.build`` does; the budget
is a stitch's parameter count (``max_params``), and ``generate`` answers prompts greedily.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch

from esta.llm.build import assemble, load_tokenizer, stitched
from esta.llm.tuning import TunableLlama
from esta.palette import TENSORS, anchor_record, write_palette
from esta.tensors import copy_into, load_tensors_file

__all__ = ["task_tensors", "write", "load_model", "forward", "generate", "export", "TOKENIZER"]

TOKENIZER = "tokenizer"


def task_tensors(model: TunableLlama) -> dict[str, torch.Tensor]:
    """Everything that trains (LoRA, stitch biases) plus the stitching layers' own weights and biases."""
    out = dict(model.trainable())
    for name, p in model.named_parameters():
        if name.startswith("net.stitch_layers.") and "lora_" not in name:
            out.setdefault(name, p)
    return {k: v.detach() for k, v in out.items()}


def write(out: str | Path, model: TunableLlama, table: pd.DataFrame, *, folders: list[str | Path], dtype: str,
          rule: str, pst: dict, tokenizer: str | Path, settings: dict) -> Path:
    """Write the palette folder of a trained Stitched LLaMA: task tensors, table, the tokenizer files
    (``tokenizer/``) and the anchor folders by name and sha256 (``settings``: what else to record)."""
    out = Path(out)
    records = [anchor_record(f"anchor{i}", f, out) for i, f in enumerate(folders)]
    meta = dict(kind="llm", method="esta", dtype=dtype, rule=rule, pst=pst, anchors=records,
                macs_unit="token", **settings)
    return write_palette(out, task_tensors(model), meta, table,
                         extra=lambda tmp: shutil.copytree(tokenizer, tmp / TOKENIZER))


def load_model(folder: Path, meta: dict, anchors: list[Path], device: str = "cpu") -> TunableLlama:
    """Anchors -> stitched by the palette's rule -> PST -> the palette's tensors copied in."""
    net, _ = stitched(anchors, meta["dtype"], rule=meta["rule"])
    model = assemble(net, meta["pst"])
    params = dict(model.named_parameters())
    targets = {k: params[k] for k in task_tensors(model)}
    copy_into(targets, load_tensors_file(folder / TENSORS)[0], folder / TENSORS, "the Stitched LLaMA of its anchors")
    return model.to(device)


def forward(model: TunableLlama, stitch_id: int, input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (B, T, V) of one stitch."""
    with torch.no_grad():
        return model(input_ids, attention_mask, stitch_id)


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
