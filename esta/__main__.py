"""Command line: ``python -m esta info --family NAME [--num-classes C] [--rank R] [--rule R] [--json]``.

Prints a family's stitch table (ids, pairs, positions, depth, GMACs, parameters) and the trainable
parameter counts: for a ViT family (``vit-ti-s-b``, ``deit-ti-s-b``, ``embedded``) ESTA's PST and
SN-Net's full fine-tuning at ``--num-classes``; for an LLM family (``llama-7b-13b``, ``tiny``) PST on
Stitched LLaMA, MACs per token. Needs no weights and no data: the models are built on the meta
device. This module is the entry point and the one place of the core that knows both families.
"""

from __future__ import annotations

import argparse
import json
import sys


def family_info(name: str, num_classes: int, rank: int, rule: str | None) -> dict:
    """The ``info`` record of a ViT or LLM family, dispatched on the family name."""
    from esta.llm.anchors import FAMILIES as LLM_FAMILIES

    if name in LLM_FAMILIES:
        from esta.llm import info

        return info.family_info(name, rank, rule or "depth")
    from esta.vit import info

    if rule not in (None, "paired"):
        raise ValueError(f"ViT family {name!r} stitches by the paired rule only, got --rule {rule}")
    return info.family_info(name, num_classes, rank)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esta")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="stitch table and trainable parameters of an anchor family")
    info.add_argument("--family", required=True, help="a ViT family (vit-ti-s-b, ...) or an LLM family (llama-7b-13b, ...)")
    info.add_argument("--num-classes", type=int, default=100, help="classes of the task head (ViT families)")
    info.add_argument("--rank", type=int, default=8, help="LoRA rank of PST")
    info.add_argument("--rule", choices=["paired", "depth"], help="stitch rule (LLM families; default depth)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = family_info(args.family, args.num_classes, args.rank, args.rule)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    head = f"{args.num_classes} classes" if result["kind"] == "vit" else f"rule {result['rule']}"
    print(f"family {args.family}: {result['n_stitches']} stitches, {head}, MACs per {result['macs_unit']}")
    for method, n in result["trainable_params"].items():
        print(f"  trainable parameters, {method}: {n:,}")
    cols = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    print(" ".join(f"{c:>11}" for c in cols))
    for row in result["stitches"]:
        print(" ".join(f"{row[c]:>11.3f}" if c == "gmacs" else f"{row[c]:>11}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
