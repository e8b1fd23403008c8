"""Command line: ``python -m esta info (--family NAME | --timm MODEL ...) [--num-classes C] [--rank R] [--rule R]
[--json]``; and for a palette (spec §12, ``esta.palette``): ``python -m esta palette PATH [--bundle]``,
``python -m esta predict PATH [--max-gmacs G | --max-latency-ms T | --stitch-id I] [--out-dir DIR] IMAGE ...``
(a segmentation palette writes one colour-mapped mask PNG per image into ``DIR``),
``python -m esta generate PATH [--max-params N | --stitch-id I] PROMPT ...``,
``python -m esta export PATH --stitch-id I [--format safetensors|onnx] OUT`` and
``python -m esta profile PATH [--device cuda] [--runtime torch onnxruntime]`` and
``python -m esta serve PATH [--slo-ms T] [--replicas N] [--address A]`` (``esta.serve``). Every palette command
takes ``--anchors PATH`` (repeated), ``--verify`` and (but ``palette``) ``--device``; options may come
before or after the positionals, and every failure is one ``error:`` line on stderr, exit status 2.

Prints a family's stitch table (ids, pairs, positions, depth, GMACs, parameters) and the trainable
parameter counts: for a ViT family (``vit-ti-s-b``, ``deit-ti-s-b``, ``embedded``) ESTA's PST and
SN-Net's full fine-tuning at ``--num-classes`` (``--timm`` names a family of timm models, spec §13);
for an LLM family (``llama-7b-13b``, ``tiny``) PST on Stitched LLaMA, MACs per token. Needs no weights and no data: the models are built on the meta
device. This module is the entry point and the one place of the core that knows both families: it
picks the family module a palette's ``kind`` names (``palette_family``) and hands it to ``Palette.load``.
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _Parser(prog="python -m esta")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="stitch table and trainable parameters of an anchor family")
    which = info.add_mutually_exclusive_group(required=True)
    which.add_argument("--family", help="a ViT family (vit-ti-s-b, ...) or an LLM family (llama-7b-13b, ...)")
    which.add_argument("--timm", nargs="+", metavar="MODEL", help="a family of timm ViTs, small to large (spec §13)")
    info.add_argument("--num-classes", type=int, default=100, help="classes of the task head (ViT families)")
    info.add_argument("--rank", type=int, default=8, help="LoRA rank of PST")
    info.add_argument("--rule", choices=["paired", "depth"],
                      help="stitch rule (LLM families, default depth; a ViT family's follows its depths)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    commands = _palette_commands(sub)
    try:
        if argv and argv[0] in commands:  # options before or after the positionals
            args = commands[argv[0]].parse_intermixed_args(argv[1:])
            args.command = argv[0]
            return _run_palette(args)
        args = parser.parse_args(argv)
    except Exception as err:  # the command line's one boundary: every failure is one stderr line
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (and printed as one line by ``main``), not printed with
    the usage and exited."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


class UsageError(ValueError):
    """A command line argparse refused."""


PALETTE_COMMANDS = ("palette", "predict", "generate", "export", "profile", "serve")


def palette_family(kind: str):
    """The family module that loads palettes of ``kind`` (the core names none; this entry point knows
    both families)."""
    from esta.palette import PaletteError

    if kind == "vit":
        from esta.vit import palette as family
    elif kind == "seg":  # a ViT family's segmentation palette (spec §14)
        from esta.vit import seg_palette as family
    elif kind == "llm":
        from esta.llm import palette as family
    else:
        raise PaletteError(f"palette kind {kind!r} is not one of this package's families (vit, seg, llm)")
    return family


def load_palette(path, anchors=None, device: str = "cpu", verify: bool = False):
    """Load a palette of either family: its ``palette.json`` (schema-checked) says which."""
    from esta.palette import Palette, read_meta

    family = palette_family(read_meta(path)["kind"])
    return Palette.load(path, family, anchors, device, verify)


def _palette_commands(sub) -> dict:
    """The subcommands that use a palette folder (``esta.palette``); options may come before or after
    the positionals (each command is parsed with ``parse_intermixed_args``)."""

    def common(p):
        p.add_argument("path", help="a palette folder (results/<method>/<variant>/<task>/palette/seed<N>)")
        p.add_argument("--anchors", action="append", metavar="PATH",
                       help="an anchor, in the palette's order; repeat per anchor (default: bundled, else recorded)")
        p.add_argument("--verify", action="store_true", help="re-hash every file instead of trusting the hash cache")

    def device(p):
        p.add_argument("--device", default="cpu", help="torch device to run on (cpu, cuda, cuda:1, mps)")

    parsers = {}
    show = parsers["palette"] = sub.add_parser("palette", help="print a palette's stitch table")
    common(show)
    show.add_argument("--bundle", action="store_true", help="copy its anchors into PATH/anchors (self-contained)")
    pred = parsers["predict"] = sub.add_parser("predict", help="classify images with one stitch of a ViT palette, "
                                               "or write their masks (a segmentation palette, --out-dir)")
    gen = parsers["generate"] = sub.add_parser("generate", help="answer prompts with one stitch of an LLM palette")
    for p, budget, inputs in ((pred, "--max-gmacs", "images"), (gen, "--max-params", "prompts")):
        common(p)
        device(p)
        p.add_argument(inputs, nargs="+", help="image files" if p is pred else "instructions")
        which = p.add_mutually_exclusive_group()
        which.add_argument(budget, type=float, help="the most accurate deployed stitch within this budget")
        which.add_argument("--max-latency-ms", type=float, help="the same, by measured batch-1 latency")
        which.add_argument("--stitch-id", type=int, help="any stitch of the palette")
    pred.add_argument("--batch-size", type=int, default=32)
    pred.add_argument("--out-dir", help="segmentation palettes: the folder for one colour-mapped mask PNG per image")
    gen.add_argument("--max-new-tokens", type=int, default=32)
    exp = parsers["export"] = sub.add_parser("export", help="write one stitch as a standalone model")
    common(exp)
    device(exp)
    exp.add_argument("out", help="output folder")
    exp.add_argument("--stitch-id", type=int, required=True)
    exp.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                     help="safetensors + JSON (esta's loaders) or ONNX (ViT palettes)")
    prof = parsers["profile"] = sub.add_parser("profile", help="measure every deployed stitch on this machine "
                                                "and write the palette's latency columns")
    common(prof)
    device(prof)
    prof.add_argument("--runtime", nargs="+", choices=["torch", "onnxruntime"], default=["torch"],
                      help="runtimes to time; the first one's numbers go into the palette's table")
    prof.add_argument("--repeats", type=int, default=10)
    prof.add_argument("--warmup", type=int, default=2)
    prof.add_argument("--threads", type=int, help="torch (and ONNX Runtime) threads (default: torch's)")
    prof.add_argument("--seq-len", type=int, default=64, help="prefill length of an LLM palette")
    prof.add_argument("--no-write", action="store_true", help="print the numbers, leave the palette as it is")
    srv = parsers["serve"] = sub.add_parser("serve", help="serve a palette elastically over HTTP on Ray Serve")
    common(srv)
    device(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--slo-ms", type=float, help="latency objective: per batch, the most accurate deployed stitch "
                     "whose queue wait + measured latency fits it (default: none, the most accurate)")
    srv.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (each loads the palette)")
    srv.add_argument("--threads", type=int, default=1, help="torch threads (and Ray CPUs) per replica")
    srv.add_argument("--address", help="a running Ray cluster (auto, ray://host:10001, host:6379; default: "
                     "RAY_ADDRESS, else one local Ray instance)")
    srv.add_argument("--max-batch", type=int, default=32, help="requests batched together (@serve.batch)")
    srv.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    srv.add_argument("--max-body-mb", type=float, default=16.0, help="larger request bodies are refused (413)")
    srv.add_argument("--max-pixels", type=int, default=4096 * 4096, help="larger images are refused (413)")
    srv.add_argument("--ray-temp-dir", help="the local Ray instance's temp folder (default: Ray's)")
    return parsers


def _run_palette(args) -> int:
    from esta.palette import bundle, choose, describe

    if args.command == "serve":  # the server loads the palette in each of its replicas
        from esta.serve import main as serve

        return serve(args)

    if args.command == "palette":  # the table only: no model is built
        if args.bundle:
            copied = bundle(args.path, args.anchors)
            print(f"bundled {len(copied)} anchors into {args.path}/anchors: {[p.name for p in copied]}",
                  file=sys.stderr)
        print(describe(args.path, args.verify))
        return 0
    if args.command == "profile" and args.threads:
        import torch

        torch.set_num_threads(args.threads)
    palette = load_palette(args.path, args.anchors, args.device, args.verify)
    if args.command == "export":
        print(palette.export(choose(palette.table, args.stitch_id), args.out, args.format))
        return 0
    if args.command == "profile":
        from esta.profile import profile, write_latency

        table = profile(palette, runtimes=tuple(args.runtime), repeats=args.repeats, warmup=args.warmup,
                        seq_len=args.seq_len)
        print(table[["stitch_id", "runtime", "batch", "median_ms", "threads", "device"]].to_string(index=False))
        if not args.no_write:
            write_latency(args.path, table, args.runtime[0])
        return 0
    budgets = dict(stitch_id=args.stitch_id, max_latency_ms=args.max_latency_ms)
    if args.command == "predict":
        palette.select(max_gmacs=args.max_gmacs, **budgets)
        if args.out_dir is not None or palette.meta["kind"] == "seg":  # masks: one PNG per image
            for r in palette.predict(args.images, args.batch_size, out_dir=args.out_dir).to_dict("records"):
                print(f"{r['image']}\t{r['mask']}\t{r['width']}x{r['height']}\tstitch {r['stitch_id']}")
            return 0
        for r in palette.predict(args.images, args.batch_size).to_dict("records"):
            print(f"{r['image']}\t{r['class']}\t{r['probability']:.4f}\tstitch {r['stitch_id']}")
        return 0
    palette.select(max_params=args.max_params, **budgets)
    for prompt, answer in zip(args.prompts, palette.generate(args.prompts, args.max_new_tokens)):
        print(f"{prompt}\t{answer}\tstitch {palette.stitch_id}")
    return 0


def _one_line(err: BaseException) -> str:
    from esta.trust import PaletteError

    msg = " ".join(str(err).split()) or type(err).__name__
    return msg if isinstance(err, PaletteError | UsageError) else f"{type(err).__name__}: {msg}"


if __name__ == "__main__":
    sys.exit(main())
