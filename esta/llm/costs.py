"""Parameters and per-token MACs of every Stitched LLaMA stitch, counted on the meta device
(spec §3 conventions applied to §11).

MACs are multiply-accumulates per token of a ``seq_len``-token sequence at batch 1, counted with
``torch.utils.flop_counter`` (2 FLOPs per MAC; we halve it) once per decoder layer of each anchor
and summed per stitch; attention's QK^T and AV matmuls are counted over the full T x T as the
counter sees them. Parameters of a stitch are everything on its path: the front embeddings, the
layers run, the stitching layer (weight and bias), the end norm and the end ``lm_head`` (untied).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esta.llm.anchors import build_family, family
from esta.llm.stitch import enumerate_stitches

__all__ = ["LlamaCost", "llama_costs", "stitch_costs", "stitch_table"]

SEQ_LEN = 512  # a typical Alpaca prompt + response [decision]


@dataclass(frozen=True)
class LlamaCost:
    """Per-token MACs and parameters of each part of one decoder anchor."""

    embed_params: int
    layer_params: list[int]
    layer_macs: list[int]
    norm_params: int
    head_params: int
    head_macs: int
    width: int


def _per_token_macs(fn, seq_len: int) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2 // seq_len


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def llama_costs(lm: nn.Module, seq_len: int = SEQ_LEN) -> LlamaCost:
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
    return LlamaCost(
        embed_params=_numel(model.embed_tokens),
        layer_params=[_numel(layer) for layer in model.layers],
        layer_macs=layer_macs,
        norm_params=_numel(model.norm),
        head_params=_numel(lm.lm_head),
        head_macs=_per_token_macs(lambda: lm.lm_head(h), seq_len),
        width=d,
    )


def stitch_costs(anchors: list[nn.Module], names: list[str], rule: str = "depth",
                 seq_len: int = SEQ_LEN) -> pd.DataFrame:
    """The stitch table with per-token MACs and parameters per stitch.

    Columns: stitch_id, name, front, end, j, k, layer, depth, params, macs, macs_nohead, gmacs,
    seq_len. Deployment intervals may use ``params`` or ``macs_nohead`` (spec §6, §11).
    """
    costs = [llama_costs(a, seq_len) for a in anchors]
    rows = []
    for s in enumerate_stitches([len(c.layer_params) for c in costs], rule):
        f, e = costs[s.front], costs[s.end]
        if s.is_anchor:
            ranges = [(f, range(len(f.layer_params)))]
            link_params = link_macs = 0
        else:
            ranges = [(f, range(s.j + 1)), (e, range(s.k, len(e.layer_params)))]
            link_params, link_macs = f.width * e.width + e.width, f.width * e.width
        body_params = sum(c.layer_params[i] for c, r in ranges for i in r)
        body_macs = sum(c.layer_macs[i] for c, r in ranges for i in r) + link_macs
        name = names[s.front] if s.is_anchor else f"{names[s.front]}[:{s.j + 1}]->{names[s.end]}[{s.k}:]"
        rows.append(dict(
            asdict(s), name=name,
            params=f.embed_params + body_params + link_params + e.norm_params + e.head_params,
            macs=body_macs + e.head_macs, macs_nohead=body_macs, seq_len=seq_len,
        ))
    df = pd.DataFrame(rows)
    df["gmacs"] = df["macs"] / 1e9
    return df


def stitch_table(family_name: str, rule: str = "depth", seq_len: int = SEQ_LEN) -> pd.DataFrame:
    """Every stitch of a family from its config table alone (meta device: no weights, no memory)."""
    specs = family(family_name)
    with torch.device("meta"):
        anchors = build_family(family_name)
    return stitch_costs(anchors, [s.name for s in specs], rule, seq_len)
