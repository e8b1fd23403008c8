"""A palette served at its export's speed (spec §12, issues 24 and 30), measured in one process.

- ``palette_vs_export_*``: a palette of ViT-Ti/S/B at the paper's shape (100 classes, random init, the
  LoRA B and stitch biases perturbed as after training), loaded as ``esta.palette.Palette.load`` leaves
  it (``for_inference``: shared LoRA merged, the stitch's biases copied in by ``select``), against the
  standalone export of the same stitch (``esta.vit.export.merged_path``), ABBA-paired, batch 1 and 32,
  ESTA and SN-Net. Target: palette / export <= 1.05. The stitches: the ViT-Ti anchor, a Ti->S stitch,
  ``STITCH`` (S->B) and the ViT-B anchor at batch 1; the ViT-Ti anchor and the Ti->S stitch at batch
  32 (the larger ones take seconds per call on a CPU; on a GPU every stitch runs at both).
- ``palette_switch_vs_forward``: 100 calls of ``select`` cycling through the ids (each copies the
  stitch's own biases in place) against one batch-32 forward of the cheapest stitch. Target < 1 %.
- ``llm_palette_vs_export_tokens``: greedy generation (32 new tokens, batch 1) of a Stitched LLaMA
  palette stitch on the shipped tiny pair against its export (``esta.llm.export.load_stitch``), as
  tokens/s palette / export. Target >= 0.95.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

import esta.vit.palette as vit_family
from bench.common import FAMILY, NUM_CLASSES, STITCH, Row, Settings, check_same, images, race, row, timed
from esta.palette import Palette, stitch_table
from esta.vit.anchors import build_family
from esta.vit.export import merged_path
from esta.vit.info import stitch_table as family_table
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, make_tunable

SWITCHES, BATCH = 100, 32


def _as_trained(model, scale: float = 0.01) -> None:
    """Perturb what trains (LoRA B starts at zero) so that merging and the stitch biases matter."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p.device))


def vit_palette(method: str, device: torch.device) -> Palette:
    """A palette of the paper's family as ``Palette.load`` leaves it, without files: every stitch deployed."""
    cfg = TuningConfig() if method == "esta" else TuningConfig(mode="full")
    model = make_tunable(StitchedViT(build_family(FAMILY, NUM_CLASSES)), cfg).to(device)
    _as_trained(model)
    costs = family_table(FAMILY, NUM_CLASSES)
    table = stitch_table(costs, costs[["stitch_id"]].assign(score=1.0, interval=0))
    return Palette(Path("."), dict(kind="vit", method=method), table, model.for_inference(), vit_family)


def bench_palette_vs_export(st: Settings, device: torch.device) -> list[Row]:
    rows = []
    costs = family_table(FAMILY, NUM_CLASSES).set_index("stitch_id")
    anchors = costs[costs["name"].str.fullmatch(r"ViT-(Ti|B)")].sort_values("gmacs").index.tolist()
    ti_s = int(costs[costs["name"].str.startswith("ViT-Ti") & ~costs.index.isin(anchors)].index[0])
    plan = {1: [anchors[0], ti_s, STITCH, anchors[-1]], BATCH: [anchors[0], ti_s]}
    if device.type == "cuda":
        plan[BATCH] = plan[1]
    for method in ("esta", "snnet"):
        palette = vit_palette(method, device)
        for batch, ids in plan.items():
            x = images(batch if not st.eval_batch == 1 else min(batch, 2), device)
            for sid in ids:
                export = merged_path(palette.model, sid).eval()
                palette.select(stitch_id=sid)
                with torch.inference_mode():
                    check_same(f"palette {method} stitch {sid}", palette(x), export(x), rtol=1e-4, atol=1e-4)
                    pair = race(lambda: palette(x), lambda: export(x), st.eval_reps, 1, device, st.budget_s)
                name = costs.loc[sid, "name"]
                rows.append(row(f"palette_vs_export_{method}_b{batch}_s{sid}", pair.ratio, "<= 1.05", "ratio",
                                f"{method} stitch {sid} ({name}), batch {x.shape[0]}: palette "
                                f"{pair.med('a') * 1e3:.1f} ms vs export {pair.med('b') * 1e3:.1f} ms "
                                f"({len(pair.a)} paired repeats{pair.others_note})"))
                del export
        del palette
    return rows


def bench_palette(st: Settings, device: torch.device) -> list[Row]:
    """100 selects (biases copied in place) vs one batch-32 forward of the cheapest stitch."""
    palette = vit_palette("esta", device)
    costs = palette.table
    cheapest = int(costs.loc[costs["gmacs"].idxmin(), "stitch_id"])
    x = images(BATCH if st.eval_batch > 1 else 2, device)
    ids = costs["stitch_id"].tolist()

    def switch():
        for i in range(SWITCHES):
            palette.select(stitch_id=ids[i % len(ids)])

    def forward():
        with torch.inference_mode():
            palette.select(stitch_id=cheapest)(x)

    forward()  # warm-up, not timed
    switch_s, forward_s = [], []
    for _ in range(max(2, st.eval_reps // 2)):  # alternated, so drift hits both alike
        switch_s.append(timed(switch, device))
        forward_s.append(timed(forward, device))
    s, f = statistics.median(switch_s), statistics.median(forward_s)
    note = (f"{SWITCHES} switches (biases copied) {s * 1e3:.3f} ms vs one batch-{x.shape[0]} forward of stitch "
            f"{cheapest} {f * 1e3:.0f} ms (median of {len(switch_s)})")
    return [row("palette_switch_vs_forward", s / f, "< 0.01", "ratio", note)]


def bench_llm_palette(st: Settings, device: torch.device, new_tokens: int = 32) -> list[Row]:
    """Greedy tokens/s of a Stitched LLaMA palette stitch vs its export, on the shipped tiny pair."""
    from esta.llm.export import export_stitch, load_stitch
    from esta.llm.shipped import load_shipped, shipped_dir
    from esta.llm.stitch import StitchedLlama
    from esta.llm.tuning import make_tunable as llama_tunable

    folder = shipped_dir("tiny")
    model = llama_tunable(StitchedLlama([load_shipped(folder, i)[0] for i in range(2)])).to(device)
    _as_trained(model)
    sid = model.num_stitches // 2 + 1  # a stitch between the anchors
    with tempfile.TemporaryDirectory() as tmp:
        export_stitch(model, sid, Path(tmp) / "stitch")
        export, _ = load_stitch(Path(tmp) / "stitch", device)
    model.for_inference().activate(sid)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.net.anchors[0].config.vocab_size, (1, 24), generator=gen).to(device)
    mask = torch.ones_like(ids)
    stop = -1  # no stop id: both generate exactly new_tokens

    def run_palette():
        return model.generate(ids, mask, sid, new_tokens, eos_token_id=stop, pad_token_id=0)

    def run_export():
        return export.generate(ids, mask, new_tokens, eos_token_id=stop, pad_token_id=0)

    model.net.anchors[model.net.stitch(sid).end].generation_config.eos_token_id = None
    export.net.anchors[export.net.stitch(sid).end].generation_config.eos_token_id = None
    assert torch.equal(run_palette(), run_export()), "the palette and its export generate different tokens"
    pair = race(run_palette, run_export, max(4, st.eval_reps), 1, device, st.budget_s)
    ratio = 1 / pair.ratio  # tokens/s palette / export = time export / time palette
    note = (f"stitch {sid} of the tiny pair, {new_tokens} new tokens after 24: palette "
            f"{new_tokens / pair.med('a'):.0f} tok/s vs export {new_tokens / pair.med('b'):.0f} tok/s "
            f"({len(pair.a)} paired repeats{pair.others_note})")
    return [row("llm_palette_vs_export_tokens", ratio, ">= 0.95", "ratio", note)]


def main() -> int:
    """``python -m bench.palette [--quick] [--threads N]``: these rows only, printed (bench/run.py
    writes them into results.csv with every other row)."""
    import argparse
    import os

    from bench.run import SETTINGS, machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    st = SETTINGS[(device.type, args.quick)]
    info = machine_info(device)
    print(f"# {info['device_name']}, {info['cores']} cores, torch {info['torch']}, {args.threads} threads, "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    for bench in (bench_palette_vs_export, bench_palette, bench_llm_palette):
        for r in bench(st, device):
            status = "-" if r.target == "-" else ("met" if r.met else "MISSED")
            print(f"{r.benchmark:36s} {r.value:8.4g} {r.unit:6s} target {r.target:8s} {status:6s} {r.note}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
