"""The stitch table of an anchor family: which stitches exist and their ids (SN-Net, Pan et al. CVPR
2023; ESTA §3; spec §2 and §11 "Positions").

A *stitch* runs the front anchor's blocks ``0..j``, a linear stitching layer, then the end anchor's
blocks ``k..D_e-1``, final norm and head; an anchor on its own is the trivial stitch. Only
neighbouring anchors are stitched ("nearest stitching"). Two rules place the positions of a pair:

- ``paired`` (SN-Net, anchors of equal depth): a sliding window of size 2 and stride 1 over block
  indices; every ordered pair ``(j, k)`` inside the window that no earlier window produced is a
  position, and the positions a window adds share one stitching layer. Depth 12: 34 positions and
  11 stitching layers per pair, 71 stitches for ViT-Ti/S/B.
- ``depth`` (anchors of any depths): front block ``j`` feeds end block ``k = round((j+1)·D_e/D_f)``
  for ``j = 0..D_f-2``, each position with its own stitching layer (LLaMA 32 -> 40 layers: 31).

Ids: ``0..A-1`` are the anchors (small to large), then each pair's positions in rule order. Both
families (``esta.vit``, ``esta.llm``) take their tables from here, and both stitched models look rows
up and match parameter names to a stitch's path with the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stitch", "RULES", "window_positions", "depth_positions", "enumerate_stitches", "default_rule",
           "layer_counts", "lookup", "on_path"]

RULES = ("paired", "depth")


@dataclass(frozen=True)
class Stitch:
    """One row of the stitch table. For an anchor, front == end and j, k, layer are -1; ``depth`` is
    the number of blocks the stitch runs."""

    stitch_id: int
    front: int
    end: int
    j: int
    k: int
    layer: int
    depth: int

    @property
    def is_anchor(self) -> bool:
        return self.front == self.end


def window_positions(depth: int) -> list[tuple[int, int, int]]:
    """(j, k, layer) of SN-Net's paired rule for one pair of ``depth``-block anchors: every ordered
    pair of blocks inside a size-2 window that no earlier window produced; the new positions of
    window ``m`` share stitching layer ``m``."""
    seen: set[tuple[int, int]] = set()
    out = []
    for m in range(depth):  # the last window (m = depth-1) holds one block and adds nothing
        window = [b for b in (m, m + 1) if b < depth]
        new = [(j, k) for j in window for k in window if (j, k) not in seen]
        seen.update(new)
        out += [(j, k, m) for j, k in new]
    return out


def depth_positions(front_depth: int, end_depth: int) -> list[tuple[int, int, int]]:
    """(j, k, layer) of the depth-preserving rule: front block j feeds end block
    ``k = round((j+1)·D_e/D_f)``, every position with its own stitching layer."""
    out = []
    for j in range(front_depth - 1):
        k = round((j + 1) * end_depth / front_depth)
        if k >= end_depth:  # the end anchor is much shallower: nothing of it would run
            continue
        out.append((j, k, len(out)))
    return out


def default_rule(depths: list[int]) -> str:
    """SN-Net's ``paired`` rule when every anchor has the same depth, else ``depth``."""
    return "paired" if len(set(depths)) <= 1 else "depth"


def enumerate_stitches(depths: list[int], widths: list[int] | None = None, rule: str | None = None) -> list[Stitch]:
    """The full stitch table of anchors with ``depths`` (small first) under ``rule`` (None:
    ``default_rule``). ``widths``, when given, must not decrease: stitching goes small to large."""
    depths = [int(d) for d in depths]
    if not depths or min(depths) < 2:
        raise ValueError(f"need at least one anchor of depth >= 2, got depths {depths}")
    if widths is not None:
        if len(widths) != len(depths):
            raise ValueError(f"got {len(depths)} depths but {len(widths)} widths")
        if list(widths) != sorted(widths):
            raise ValueError(f"anchors must be ordered small to large; widths are {list(widths)}")
    rule = default_rule(depths) if rule is None else rule
    if rule not in RULES:
        raise ValueError(f"stitch rule must be one of {RULES}, got {rule!r}")
    table = [Stitch(a, a, a, -1, -1, -1, d) for a, d in enumerate(depths)]
    for p in range(len(depths) - 1):
        df, de = depths[p], depths[p + 1]
        if rule == "paired":
            if df != de:
                raise ValueError(f"the paired rule needs anchors of equal depth, got {df} and {de} blocks")
            positions = window_positions(df)
        else:
            positions = depth_positions(df, de)
        for j, k, layer in positions:
            table.append(Stitch(len(table), p, p + 1, j, k, layer, j + 1 + de - k))
    return table


def layer_counts(table: list[Stitch]) -> list[int]:
    """Stitching layers of each neighbouring pair (front anchor 0, 1, ...): one more than the highest
    layer index its positions use (paired: positions share them; depth: one each)."""
    n_pairs = max(s.front for s in table) if table else 0
    return [1 + max((s.layer for s in table if s.front == p and not s.is_anchor), default=-1) for p in range(n_pairs)]


def lookup(table: list[Stitch], stitch_id: int) -> Stitch:
    """The row of ``stitch_id``; an unknown id is an error naming the valid range."""
    if stitch_id in range(len(table)):
        return table[stitch_id]
    raise ValueError(f"stitch id {stitch_id} is not in 0..{len(table) - 1} ({len(table)} stitches)")


def on_path(name: str, prefixes: list[str]) -> bool:
    """Whether the parameter or module ``name`` lies under one of a stitch's path ``prefixes``
    (module prefixes end in "."; a parameter given by its full name matches itself)."""
    return any(name.startswith(p) or name + "." == p for p in prefixes)
