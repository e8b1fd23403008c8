"""Switching stitches in a loaded palette (spec §12, issue 24): SN-Net's ``reset_stitch_id`` promise,
measured. A palette of ViT-Ti/S/B at the paper's shape (PST, 100 classes, random init, every stitch
deployed) is built once, as ``esta.palette.Palette.load`` leaves it; then, side by side in one run,
100 calls of ``Palette.select`` cycling through the stitch ids (every one validated against the table)
against one batch-32 forward of the cheapest stitch (ViT-Ti). ``select`` changes an int and touches
no weight (tests/test_palette.py checks that), so the ratio should be far below 1 %.
"""

from __future__ import annotations

import statistics

import torch

from bench.common import FAMILY, NUM_CLASSES, Row, Settings, images, row, timed
from esta.palette import Palette, stitch_table
from esta.vit.anchors import build_family
from esta.vit.info import stitch_table as family_table
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, make_tunable

SWITCHES, BATCH = 100, 32


def bench_palette(st: Settings, device: torch.device) -> list[Row]:
    import esta.vit.palette as family

    model = make_tunable(StitchedViT(build_family(FAMILY, NUM_CLASSES)), TuningConfig()).to(device).eval()
    costs = family_table(FAMILY, NUM_CLASSES)
    table = stitch_table(costs, costs[["stitch_id"]].assign(score=1.0, interval=0))
    palette = Palette(".", dict(kind="vit", method="esta"), table, model, family)
    cheapest = int(costs.loc[costs["gmacs"].idxmin(), "stitch_id"])
    x = images(BATCH, device)
    ids = costs["stitch_id"].tolist()

    def switch():
        for i in range(SWITCHES):
            palette.select(stitch_id=ids[i % len(ids)])

    def forward():
        palette.select(stitch_id=cheapest)(x)

    forward()  # warm-up, not timed
    switch_s, forward_s = [], []
    for _ in range(max(2, st.eval_reps // 2)):  # alternated, so drift hits both alike
        switch_s.append(timed(switch, device))
        forward_s.append(timed(forward, device))
    s, f = statistics.median(switch_s), statistics.median(forward_s)
    note = (f"{SWITCHES} switches {s * 1e3:.3f} ms vs one batch-{BATCH} forward of stitch {cheapest} "
            f"{f * 1e3:.0f} ms (median of {len(switch_s)})")
    return [row("palette_switch_vs_forward", s / f, "< 0.01", "ratio", note)]
