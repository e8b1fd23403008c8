"""Command line: ``python -m esta info --family vit-ti-s-b --num-classes 100 [--json]``.

Prints a family's stitch table (ids, pairs, positions, depth, GMACs, parameters) and the trainable
parameter counts of ESTA's PST (r = 8) and SN-Net's full fine-tuning. Needs no weights and no data:
the models are built on the meta device.
"""

from __future__ import annotations

import argparse
import json
import sys

from esta.info import family_info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esta")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="stitch table and trainable parameters of an anchor family")
    info.add_argument("--family", required=True)
    info.add_argument("--num-classes", type=int, default=100)
    info.add_argument("--rank", type=int, default=8, help="LoRA rank of PST")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        result = family_info(args.family, args.num_classes, args.rank)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"family {args.family}: {result['n_stitches']} stitches, {args.num_classes} classes")
    for method, n in result["trainable_params"].items():
        print(f"  trainable parameters, {method}: {n:,}")
    cols = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    print(" ".join(f"{c:>9}" for c in cols))
    for row in result["stitches"]:
        print(" ".join(f"{row[c]:>9.3f}" if c == "gmacs" else f"{row[c]:>9}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
