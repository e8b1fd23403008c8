"""Parameters and per-token MACs of every Stitched LLaMA stitch, counted on the meta device
(spec §3 conventions applied to §11).

MACs are multiply-accumulates per token of a ``seq_len``-token sequence at batch 1, counted with
``torch.utils.flop_counter`` (2 FLOPs per MAC; we halve it) once per decoder layer of each anchor
and summed per stitch by the method core (``esta.costs``; ``macs_unit`` says "token"); attention's
QK^T and AV matmuls are counted over the full T x T as the counter sees them. Parameters of a stitch
are everything on its path: the front embeddings, the layers run, the stitching layer (weight and
bias), the end norm and the end ``lm_head``; with tied embeddings an anchor's own stitch counts the
one tensor once (a stitch across anchors uses the front's embeddings and the end's head: two).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esta import costs
from esta.llm.anchors import build_family, family

__all__ = ["llama_costs", "stitch_costs", "stitch_table"]

SEQ_LEN = 512  # a typical Alpaca prompt + response [decision]


def _per_token_macs(fn, seq_len: int) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2 // seq_len


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def llama_costs(lm: nn.Module, seq_len: int = SEQ_LEN) -> costs.AnchorCost:
    """Count one ``LlamaForCausalLM`` part by part (the model should already be on the meta device)."""
    model, d = lm.model, lm.config.hidden_size
    h = torch.empty(1, seq_len, d, device=lm.device, dtype=lm.dtype)
    pos = torch.arange(seq_len, device=lm.device)[None]
    pe = model.rotary_emb(h, pos)
    # Every decoder layer of one HF model is built from the same config, so one count serves all
    # (counting each of 72 layers at T = 512 takes seconds even on the meta device).
    first = model.layers[0]
    macs = _per_token_macs(lambda: first(h, attention_mask=None, position_embeddings=pe, position_ids=pos), seq_len)
    layer_macs = [macs] * len(model.layers)
    return costs.AnchorCost(
        stem_macs=0,  # an embedding lookup multiplies nothing
        block_macs=layer_macs,
        norm_macs=0,  # the counter sees matmuls only; RMSNorm has none
        head_macs=_per_token_macs(lambda: lm.lm_head(h), seq_len),
        stem_params=_numel(model.embed_tokens),
        block_params=[_numel(layer) for layer in model.layers],
        norm_params=_numel(model.norm),
        head_params=_numel(lm.lm_head),
        tokens=1,  # per token: the stitching layer maps one row
        width=d,
        tied_params=lm.lm_head.weight.numel() if lm.lm_head.weight is model.embed_tokens.weight else 0,
    )


def _name(s, names: list[str]) -> str:
    return f"{names[s.front]}[:{s.j + 1}]->{names[s.end]}[{s.k}:]"


def stitch_costs(anchors: list[nn.Module], names: list[str], rule: str = "depth",
                 seq_len: int = SEQ_LEN) -> pd.DataFrame:
    """The stitch table with per-token MACs and parameters per stitch (``esta.costs.stitch_costs``),
    plus ``seq_len``. Deployment intervals may use ``params`` or ``macs_nohead`` (spec §6, §11)."""
    parts = [llama_costs(a, seq_len) for a in anchors]
    return costs.stitch_costs(parts, names, unit="token", rule=rule, name=_name).assign(seq_len=seq_len)


def stitch_table(family_name: str, rule: str = "depth", seq_len: int = SEQ_LEN) -> pd.DataFrame:
    """Every stitch of a family from its config table alone (meta device: no weights, no memory)."""
    specs = family(family_name)
    with torch.device("meta"):
        anchors = build_family(family_name)
    return stitch_costs(anchors, [s.name for s in specs], rule, seq_len)
