"""Forward-pass benchmarks: what stitching costs at inference, and what prefix reuse saves.

- ``stitch_flops_table_time``: seconds to build the 71-row MACs/params table from scratch
  (``esta.vit.info.stitch_table``: meta-device family + ``stitch_costs``), first thing in the process.
- Forward overhead (eval, no_grad): ``anchor_id_vs_timm_time`` runs stitch ids 0, 1, 2 against the
  three timm anchors' own ``forward``; ``stitch_vs_parts_time`` runs stitch 56 against its parts
  called directly (front embed + blocks[:7], stitching linear, end blocks[7:] + norm + head).
  Outputs are checked equal before timing; a mismatch raises and the run exits non-zero.
- Evaluating all 71 stitches of the SN-Net model (shared parameters) on one batch with each front
  anchor's prefix computed once (``esta.vit.evaluate.predict``) vs one forward per stitch.
  ``all_stitches_prefix_flops``: FLOPs counted on the meta device over all 71 stitches, printed
  beside the analytic minimum from ``esta.vit.stitch.anchor_costs`` (each front anchor's stem and
  blocks up to its deepest cut run once). ``all_stitches_prefix_time``: median paired time ratio.
  The logits of the two ways are checked equal.
"""

from __future__ import annotations

import time

import torch

from bench.common import (
    FAMILY,
    N_STITCHES,
    NUM_CLASSES,
    STITCH,
    MismatchError,
    Row,
    Settings,
    autocast,
    check_same,
    count_flops,
    images,
    meta_model,
    race,
    row,
    tolerance,
)
from esta.vit.info import meta_stitched, stitch_table
from esta.vit.evaluate import predict
from esta.vit.stitch import StitchedViT, anchor_costs, stitch_costs
from esta.vit.tuning import TunableViT, TuningConfig


def bench_table() -> list[Row]:
    t0 = time.perf_counter()
    table = stitch_table(FAMILY, NUM_CLASSES)
    seconds = time.perf_counter() - t0
    if len(table) != N_STITCHES:
        raise MismatchError(f"stitch table has {len(table)} rows, expected {N_STITCHES}")
    return [row("stitch_flops_table_time", seconds, "< 10", "s", f"{len(table)} stitches")]


def stitch_by_parts(net: StitchedViT, stitch_id: int):
    """Stitch ``stitch_id`` written out with the timm modules themselves."""
    s = net.stitch(stitch_id)
    front, end, layer = net.anchors[s.front], net.anchors[s.end], net.stitch_layer(s)

    def run(x: torch.Tensor) -> torch.Tensor:
        h = front.norm_pre(front.patch_drop(front._pos_embed(front.patch_embed(x))))
        for blk in front.blocks[: s.j + 1]:
            h = blk(h)
        h = layer(h)
        for blk in end.blocks[s.k :]:
            h = blk(h)
        return end.forward_head(end.norm(h))

    return run


@torch.no_grad()
def bench_forward(net: StitchedViT, st: Settings, device: torch.device, checks: list[str]) -> list[Row]:
    net.eval()
    x = images(st.eval_batch, device)
    anchors = list(net.anchors)
    n = len(anchors)

    def stitched_anchors():
        with autocast(device):
            return [net(x, i) for i in range(n)]

    def timm_anchors():
        with autocast(device):
            return [vit(x) for vit in anchors]

    parts = stitch_by_parts(net, STITCH)

    def stitched():
        with autocast(device):
            return net(x, STITCH)

    def by_parts():
        with autocast(device):
            return parts(x)

    tol = tolerance(device)
    for i, (got, want) in enumerate(zip(stitched_anchors(), timm_anchors())):
        check_same(f"stitch id {i} vs timm anchor {i}", got, want, **tol)
    checks.append("anchor_ids_equal_timm")
    check_same(f"stitch {STITCH} vs its parts", stitched(), by_parts(), **tol)
    checks.append("stitch_equals_parts")

    # the checks above were the warm-up calls
    anchor = race(stitched_anchors, timm_anchors, st.eval_reps, 0, device, st.budget_s)
    stitch = race(stitched, by_parts, st.eval_reps, 0, device, st.budget_s)
    batch = f"batch {st.eval_batch}"
    anchor_note = f"ids 0-{n - 1} {anchor.med('a'):.3f} s, timm {anchor.med('b'):.3f} s, {batch}{anchor.noise}"
    stitch_note = f"id {STITCH} {stitch.med('a'):.3f} s, parts {stitch.med('b'):.3f} s, {batch}{stitch.noise}"
    return [
        row("anchor_id_vs_timm_time", anchor.ratio, "<= 1.05", "ratio", anchor_note),
        row("stitch_vs_parts_time", stitch.ratio, "<= 1.05", "ratio", stitch_note),
    ]


def prefix_floor() -> float:
    """MACs of evaluating every stitch with each front anchor's stem and blocks up to its deepest
    cut run once, over the MACs of one full forward per stitch (from esta's per-block costs)."""
    anchors = list(meta_stitched(FAMILY, NUM_CLASSES).anchors)
    costs = [anchor_costs(a) for a in anchors]
    table = stitch_costs(anchors)
    depth = len(costs[0].block_macs)
    shared = 0  # prefix MACs that reuse saves
    for front, rows in table.groupby("front"):
        c = costs[front]
        cuts = [depth - 1 if r.front == r.end else r.j for r in rows.itertuples()]
        prefixes = [c.stem_macs + sum(c.block_macs[: cut + 1]) for cut in cuts]
        shared += sum(prefixes) - max(prefixes)
    total = table["macs"].sum()
    return (total - shared) / total


def bench_all_stitches(model: TunableViT, st: Settings, device: torch.device, checks: list[str]) -> list[Row]:
    if not model.shares_prefix:
        raise ValueError("prefix reuse needs a model whose stitches share parameters (SN-Net)")
    ids = list(range(model.net.num_stitches))

    meta = meta_model(TuningConfig(mode="full")).eval()
    xm = images(1, "meta")
    with torch.no_grad():
        flops_reuse = count_flops(lambda: predict(meta, xm, ids))
        flops_each = count_flops(lambda: [meta(xm, sid) for sid in ids])
    flops_ratio = flops_reuse / flops_each
    floor = prefix_floor()

    model.eval()
    timed_ids = ids if st.all_timed is None else list(st.all_timed)
    x = images(st.all_batch, device)

    def reuse():
        with autocast(device):
            return predict(model, x, timed_ids)

    @torch.no_grad()
    def each():
        with autocast(device):
            return {sid: model(x, sid) for sid in timed_ids}

    got, want = reuse(), each()
    check_same("prefix-reuse logits vs one forward per stitch", got, want, **tolerance(device))
    for sid in timed_ids:
        if not torch.equal(got[sid].argmax(-1), want[sid].argmax(-1)):
            raise MismatchError(f"stitch {sid}: predictions differ between prefix reuse and its own forward")
    checks.append("prefix_predictions_equal")

    pair = race(reuse, each, st.all_reps, 0, device, st.budget_s)  # the check was the warm-up
    flops_note = f"{flops_reuse / 2e9:.1f} vs {flops_each / 2e9:.1f} GMACs per image; analytic minimum {floor:.4f}"
    time_note = (
        f"reuse {pair.med('a'):.2f} s, one forward each {pair.med('b'):.2f} s "
        f"({len(timed_ids)} stitches, batch {st.all_batch}){pair.noise}"
    )
    return [
        row("all_stitches_prefix_flops", flops_ratio, "<= 0.85", "ratio", flops_note),
        row("all_stitches_prefix_flops_min", floor, "-", "ratio", "analytic, from esta per-block MACs"),
        row("all_stitches_prefix_time", pair.ratio, "<= 0.9", "ratio", time_note),
    ]
