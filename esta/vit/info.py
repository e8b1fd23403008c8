"""ViT family summary shared by ``python -m esta info`` and the workflow's stitch table (spec §2-§3,
§5); the LLaMA counterpart is ``esta.llm.info``."""

from __future__ import annotations

import pandas as pd
import torch

from esta.tunable import count_trainable
from esta.vit.anchors import AnchorSpec, family, meta_family
from esta.vit.stitch import StitchedViT, stitch_costs
from esta.vit.tuning import TunableViT, TuningConfig, make_tunable

__all__ = ["meta_stitched", "stitch_table", "trainable_params", "family_info"]

COLUMNS = ["stitch_id", "name", "front", "end", "j", "k", "layer", "depth", "gmacs", "macs", "macs_nohead",
           "macs_unit", "params"]


def meta_stitched(
    family_name: str | tuple[AnchorSpec, ...], num_classes: int, tuning: TuningConfig | None = None
) -> StitchedViT | TunableViT:
    """The stitched family on the meta device (shapes only: counts in milliseconds, no memory),
    with its trainable set settled by ``tuning`` when given (LoRA and stitch biases on meta too)."""
    with torch.device("meta"):
        net = StitchedViT(meta_family(family_name, num_classes))
        return net if tuning is None else make_tunable(net, tuning)


def stitch_table(family_name: str | tuple[AnchorSpec, ...], num_classes: int) -> pd.DataFrame:
    """Every stitch of a family with MACs (with and without head) and parameters."""
    anchors = list(meta_stitched(family_name, num_classes).anchors)
    return stitch_costs(anchors, [s.name for s in family(family_name)])[COLUMNS]


def trainable_params(family_name: str | tuple[AnchorSpec, ...], num_classes: int, rank: int = 8) -> dict[str, int]:
    """Exact trainable parameter counts of PST (ESTA) and full fine-tuning (SN-Net)."""
    cfgs = dict(esta=TuningConfig(rank=rank), snnet=TuningConfig(mode="full"))
    return {method: count_trainable(meta_stitched(family_name, num_classes, cfg)) for method, cfg in cfgs.items()}


def family_info(family_name: str | tuple[AnchorSpec, ...], num_classes: int, rank: int = 8,
                rule: str | None = None) -> dict:
    """The stitch table and trainable counts of a family, as ``python -m esta info`` prints them.
    The rule is the family's (``esta.stitches.default_rule`` of its depths); a ``rule`` that differs
    is an error."""
    from esta.vit.timm_family import family_label

    anchors = meta_stitched(family_name, num_classes)
    if rule is not None and rule != anchors.rule:
        raise ValueError(f"ViT family {family_label(family_name)} (depths {anchors.depths}) stitches by the "
                         f"{anchors.rule} rule, got --rule {rule}")
    table = stitch_table(family_name, num_classes)
    keep = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    return dict(
        family=family_label(family_name),
        kind="vit",
        num_classes=num_classes,
        rule=anchors.rule,
        depths=anchors.depths,
        macs_unit="image",
        n_stitches=len(table),
        trainable_params=trainable_params(family_name, num_classes, rank),
        stitches=table[keep].to_dict(orient="records"),
    )
