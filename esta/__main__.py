"""Command line: ``python -m esta info (--family NAME | --timm MODEL ...) [--num-classes C] [--rank R] [--rule R]
[--json]``; and for a palette (spec §12, ``esta.palette``): ``python -m esta palette PATH [--bundle]``,
``python -m esta predict PATH [--max-gmacs G | --max-latency-ms T | --stitch-id I] IMAGE ...`` and
``python -m esta generate PATH [--max-params N | --stitch-id I] PROMPT ...``.

Prints a family's stitch table (ids, pairs, positions, depth, GMACs, parameters) and the trainable
parameter counts: for a ViT family (``vit-ti-s-b``, ``deit-ti-s-b``, ``embedded``) ESTA's PST and
SN-Net's full fine-tuning at ``--num-classes`` (``--timm`` names a family of timm models, spec §13);
for an LLM family (``llama-7b-13b``, ``tiny``) PST on Stitched LLaMA, MACs per token. Needs no weights and no data: the models are built on the meta
device. This module is the entry point and the one place of the core that knows both families.
"""

from __future__ import annotations

import argparse
import json
import sys


def family_info(name, num_classes: int, rank: int, rule: str | None) -> dict:
    """The ``info`` record of a ViT or LLM family, dispatched on the family name (a ViT family may
    also be given by its rows, ``esta.vit.timm_family.timm_specs``)."""
    from esta.llm.anchors import FAMILIES as LLM_FAMILIES

    if isinstance(name, str) and name in LLM_FAMILIES:
        from esta.llm import info

        return info.family_info(name, rank, rule or "depth")
    from esta.vit import info

    return info.family_info(name, num_classes, rank, rule)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esta")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="stitch table and trainable parameters of an anchor family")
    which = info.add_mutually_exclusive_group(required=True)
    which.add_argument("--family", help="a ViT family (vit-ti-s-b, ...) or an LLM family (llama-7b-13b, ...)")
    which.add_argument("--timm", nargs="+", metavar="MODEL", help="a family of timm ViTs, small to large (spec §13)")
    info.add_argument("--num-classes", type=int, default=100, help="classes of the task head (ViT families)")
    info.add_argument("--rank", type=int, default=8, help="LoRA rank of PST")
    info.add_argument("--rule", choices=["paired", "depth"],
                      help="stitch rule (LLM families, default depth; a ViT family's follows its depths)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    _palette_commands(sub)
    args = parser.parse_args(argv)
    if args.command != "info":
        return _run_palette(args)
    try:
        if args.timm:
            from esta.vit.timm_family import check_timm_family, timm_specs

            specs = timm_specs(args.timm)
            check_timm_family(specs)
            result = family_info(specs, args.num_classes, args.rank, args.rule)
        else:
            result = family_info(args.family, args.num_classes, args.rank, args.rule)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    head = f"{args.num_classes} classes" if result["kind"] == "vit" else f"rule {result['rule']}"
    print(f"family {result['family']}: {result['n_stitches']} stitches, {head}, MACs per {result['macs_unit']}")
    for method, n in result["trainable_params"].items():
        print(f"  trainable parameters, {method}: {n:,}")
    cols = ["stitch_id", "front", "end", "j", "k", "layer", "depth", "gmacs", "params"]
    print(" ".join(f"{c:>11}" for c in cols))
    for row in result["stitches"]:
        print(" ".join(f"{row[c]:>11.3f}" if c == "gmacs" else f"{row[c]:>11}" for c in cols))
    return 0


def _palette_commands(sub) -> None:
    """The subcommands that use a palette folder (``esta.palette``)."""
    show = sub.add_parser("palette", help="print a palette's stitch table")
    show.add_argument("path", help="a palette folder (results/<method>/<variant>/<task>/palette/seed<N>)")
    show.add_argument("--bundle", action="store_true", help="copy its anchors into PATH/anchors (self-contained)")
    show.add_argument("--anchors", nargs="+", help="the anchors, in the palette's order (default: where it says)")
    pred = sub.add_parser("predict", help="classify images with one stitch of a ViT palette")
    gen = sub.add_parser("generate", help="answer prompts with one stitch of a Stitched LLaMA palette")
    for p, budget, inputs in ((pred, "--max-gmacs", "images"), (gen, "--max-params", "prompts")):
        p.add_argument("path", help="a palette folder")
        p.add_argument(inputs, nargs="+", help="image files" if p is pred else "instructions")
        p.add_argument("--anchors", nargs="+", help="the anchors, in the palette's order (default: where it says)")
        which = p.add_mutually_exclusive_group()
        which.add_argument(budget, type=float, help="the most expensive deployed stitch within this budget")
        which.add_argument("--max-latency-ms", type=float, help="the same, by measured batch-1 latency")
        which.add_argument("--stitch-id", type=int, help="any stitch of the palette")
    pred.add_argument("--batch-size", type=int, default=32)
    gen.add_argument("--max-new-tokens", type=int, default=32)


def _run_palette(args) -> int:
    from esta.palette import Palette, PaletteError, bundle, describe

    try:
        if args.command == "palette":  # the table only: no model is built
            if args.bundle:
                copied = bundle(args.path, args.anchors)
                print(f"bundled {len(copied)} anchors into {args.path}/anchors", file=sys.stderr)
            print(describe(args.path))
            return 0
        palette = Palette.load(args.path, args.anchors)
        budgets = dict(stitch_id=args.stitch_id, max_latency_ms=args.max_latency_ms)
        if args.command == "predict":
            palette.select(max_gmacs=args.max_gmacs, **budgets)
            for r in palette.predict(args.images, args.batch_size).to_dict("records"):
                print(f"{r['image']}\t{r['class']}\t{r['probability']:.4f}\tstitch {r['stitch_id']}")
            return 0
        palette.select(max_params=args.max_params, **budgets)
        for prompt, answer in zip(args.prompts, palette.generate(args.prompts, args.max_new_tokens)):
            print(f"{prompt}\t{answer}\tstitch {palette.stitch_id}")
        return 0
    except PaletteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
