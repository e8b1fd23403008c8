"""Family summary shared by ``python -m esta info`` and the workflow's stitch table (spec §2-§3, §5)."""

from __future__ import annotations

import pandas as pd
import torch

from esta.vit.tuning import TuningConfig, make_tunable, count_trainable
from esta.vit.anchors import build_family, family
from esta.vit.stitch import StitchedViT, stitch_costs

__all__ = ["stitch_table", "family_info"]

COLUMNS = ["stitch_id", "name", "front", "end", "j", "k", "layer", "depth", "gmacs", "macs", "macs_nohead", "params"]


def stitch_table(family_name: str, num_classes: int) -> pd.DataFrame:
    """Every stitch of a family with MACs (with and without head) and parameters."""
    specs = family(family_name)
    with torch.device("meta"):
        anchors = build_family(family_name, num_classes)
    return stitch_costs(anchors, [s.name for s in specs])[COLUMNS]


def trainable_params(family_name: str, num_classes: int, rank: int = 8) -> dict[str, int]:
    """Exact trainable parameter counts of PST (ESTA) and full fine-tuning (SN-Net)."""
    out = {}
    for method, cfg in (("esta", TuningConfig(rank=rank)), ("snnet", TuningConfig(mode="full"))):
        with torch.device("meta"):
            out[method] = count_trainable(make_tunable(StitchedViT(build_family(family_name, num_classes)), cfg))
    return out


def family_info(family_name: str, num_classes: int, rank: int = 8) -> dict:
    table = stitch_table(family_name, num_classes)
    keep = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    return dict(
        family=family_name,
        num_classes=num_classes,
        n_stitches=len(table),
        trainable_params=trainable_params(family_name, num_classes, rank),
        stitches=table[keep].to_dict(orient="records"),
    )
