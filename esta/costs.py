"""MACs and parameters of every stitch, summed from per-part counts of each anchor (spec §3, §11).

Each family counts one anchor part by part on the meta device (``esta.vit.stitch.anchor_costs``,
``esta.llm.costs.llama_costs``) into an ``AnchorCost``; ``stitch_costs`` walks the stitch table
(``esta.stitches``) and adds up the parts each stitch runs: the front anchor's stem and blocks
``0..j``, the stitching layer, the end anchor's blocks ``k..``, its final norm and its head. Counting
once per part and summing is exact and far faster than a pass per stitch.

MACs are multiply-accumulates (``torch.utils.flop_counter`` reports 2 FLOPs per MAC; the families
halve it) per ``unit``: per image at batch 1 for ViTs (SN-Net's and fvcore's convention), per token
of a fixed-length sequence for decoders. Every table carries the unit in its ``macs_unit`` column.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import pandas as pd

from esta.stitches import Stitch, enumerate_stitches

__all__ = ["AnchorCost", "stitch_costs", "COST_COLUMNS"]

COST_COLUMNS = ["macs", "macs_nohead", "gmacs", "macs_unit", "params"]


@dataclass(frozen=True)
class AnchorCost:
    """MACs and parameters of each part of one anchor. ``tokens`` is how many rows the stitching
    layer maps per unit of MACs (every token of an image; 1 for per-token counts)."""

    stem_macs: int
    block_macs: list[int]
    norm_macs: int
    head_macs: int
    stem_params: int
    block_params: list[int]
    norm_params: int
    head_params: int
    tokens: int
    width: int
    # parameters the head shares with the stem (tied embeddings): counted once on a path through both
    tied_params: int = 0

    @property
    def depth(self) -> int:
        return len(self.block_params)


def stitch_costs(costs: list[AnchorCost], names: list[str], unit: str, rule: str | None = None,
                 name: Callable[[Stitch, list[str]], str] | None = None) -> pd.DataFrame:
    """The stitch table with MACs and parameters per stitch.

    Columns: stitch_id, front, end, j, k, layer, depth, name, macs, macs_nohead, gmacs, macs_unit,
    params. The stitching layer's cost (weight and bias) is included; ``macs_nohead`` leaves out the
    head (deployment intervals on FLOPs use it, spec §6). ``name(stitch, names)`` names a stitch that
    is not an anchor (default ``"A->B (j,k)"``).
    """
    table = enumerate_stitches([c.depth for c in costs], [c.width for c in costs], rule)
    rows = []
    for s in table:
        f, e = costs[s.front], costs[s.end]
        if s.is_anchor:
            parts = [(f, range(f.depth))]
            link_macs = link_params = 0
        else:
            parts = [(f, range(s.j + 1)), (e, range(s.k, e.depth))]
            link_macs, link_params = f.tokens * f.width * e.width, f.width * e.width + e.width
        body = (f.stem_macs + sum(c.block_macs[i] for c, r in parts for i in r) + link_macs + e.norm_macs)
        params = (f.stem_params + sum(c.block_params[i] for c, r in parts for i in r) + link_params
                  + e.norm_params + e.head_params - (f.tied_params if s.is_anchor else 0))
        if s.is_anchor:
            label = names[s.front]
        else:
            label = name(s, names) if name else f"{names[s.front]}->{names[s.end]} ({s.j},{s.k})"
        rows.append(dict(asdict(s), name=label, macs=body + e.head_macs, macs_nohead=body, params=params))
    df = pd.DataFrame(rows)
    return df.assign(gmacs=df["macs"] / 1e9, macs_unit=unit)
