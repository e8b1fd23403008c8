"""Stitched LLaMA family summary for ``python -m esta info`` (spec §11; the ViT counterpart is
``esta.vit.info``): the stitch table (parameters, MACs per token) and PST's trainable parameters,
counted on the meta device from the family's config table (no weights)."""

from __future__ import annotations

from esta.llm.costs import SEQ_LEN, stitch_table
from esta.llm.tuning import LlamaTuningConfig, family_trainable

__all__ = ["family_info"]


def family_info(family_name: str, rank: int = 8, rule: str = "depth", seq_len: int = SEQ_LEN) -> dict:
    """The stitch table and PST's trainable counts of an LLM family under ``rule``."""
    table = stitch_table(family_name, rule, seq_len)
    keep = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    counts = family_trainable(family_name, LlamaTuningConfig(rank=rank), rule)
    return dict(
        family=family_name,
        kind="llm",
        rule=rule,
        seq_len=seq_len,
        macs_unit="token",
        n_stitches=len(table),
        trainable_params=dict(esta=counts["total"]),
        trainable_by_kind=counts,
        stitches=table[keep].to_dict(orient="records"),
    )
