"""Stitch enumeration, FLOPs/parameters, least-squares init and the stitched forward (spec §2-§4)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from conftest import DEPTH, make_anchors, make_images
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from esta.vit.anchors import FAMILIES, build_anchor, family, meta_family
from esta.vit.info import stitch_table
from esta.lstsq import affine_lstsq as least_squares
from esta.stitches import enumerate_stitches
from esta.vit.stitch import StitchedViT, ls_init, stitch_costs

# ---------------------------------------------------------------------------------------------
# Enumeration (spec §2)


def spec_table_ti_s_b() -> list[tuple]:
    """The 71-row table for D = 12 and three anchors, written out from the spec text:
    (stitch_id, front, end, j, k, layer, depth)."""
    rows = [(0, 0, 0, -1, -1, -1, 12), (1, 1, 1, -1, -1, -1, 12), (2, 2, 2, -1, -1, -1, 12)]
    for front in (0, 1):
        positions = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]  # window 0 -> layer 0
        for m in range(1, 11):  # window m = 1..10 -> layer m; window 11 adds nothing
            positions += [(m, m + 1, m), (m + 1, m, m), (m + 1, m + 1, m)]
        for j, k, layer in positions:
            rows.append((len(rows), front, front + 1, j, k, layer, 12 + 1 + j - k))
    return rows


def as_tuples(table) -> list[tuple]:
    return [(s.stitch_id, s.front, s.end, s.j, s.k, s.layer, s.depth) for s in table]


def test_table_for_vit_ti_s_b_matches_the_spec_row_by_row():
    expected = spec_table_ti_s_b()
    assert len(expected) == 71
    assert as_tuples(enumerate_stitches([12] * 3)) == expected


def test_table_examples_from_the_spec():
    t = enumerate_stitches([12] * 3)
    assert [s.stitch_id for s in t] == list(range(71))
    assert all(s.is_anchor and s.front == s.end == s.stitch_id for s in t[:3])
    assert {(s.front, s.end) for s in t[3:37]} == {(0, 1)}
    assert {(s.front, s.end) for s in t[37:71]} == {(1, 2)}
    assert (t[24].front, t[24].end, t[24].j, t[24].k) == (0, 1, 7, 7)
    assert (t[56].front, t[56].end, t[56].j, t[56].k) == (1, 2, 6, 7)
    for pair_start in (3, 37):
        pair = t[pair_start : pair_start + 34]
        by_layer = {}
        for s in pair:
            by_layer.setdefault(s.layer, []).append((s.j, s.k))
        assert sorted(by_layer) == list(range(11))
        assert by_layer[0] == [(0, 0), (0, 1), (1, 0), (1, 1)]
        for m in range(1, 11):
            assert by_layer[m] == [(m, m + 1), (m + 1, m), (m + 1, m + 1)]
    assert not any(s.front == 0 and s.end == 2 for s in t)  # nearest stitching only


@pytest.mark.parametrize("depth", [2, 3, 4, 6, 12, 24])
@pytest.mark.parametrize("n_anchors", [1, 2, 3, 4])
def test_general_rule_for_any_depth_and_anchor_count(depth, n_anchors):
    t = enumerate_stitches([depth] * n_anchors)
    assert len(t) == n_anchors + (n_anchors - 1) * (3 * depth - 2)
    assert [s.stitch_id for s in t] == list(range(len(t)))
    assert [s.front for s in t[:n_anchors]] == list(range(n_anchors))
    for s in t[n_anchors:]:
        assert s.end == s.front + 1  # nearest stitching only
        assert s.depth == depth + 1 + s.j - s.k == (s.j + 1) + (depth - s.k)
        # The window rule in closed form: (j, k) first appears in window max(j, k) - 1 (window 0 for
        # (0, 0)), and that window's index is the shared layer.
        assert s.layer == max(0, max(s.j, s.k) - 1)
    for front in range(n_anchors - 1):
        pair = [s for s in t if s.front == front and not s.is_anchor]
        positions = [(s.j, s.k) for s in pair]
        assert len(positions) == 3 * depth - 2
        assert set(positions) == {(j, k) for j in range(depth) for k in range(depth) if abs(j - k) <= 1}
        assert len({s.layer for s in pair}) == depth - 1
        assert [s.layer for s in pair] == sorted(s.layer for s in pair)  # window order
        assert pair[0].stitch_id == n_anchors + front * (3 * depth - 2)  # pairs in order


@pytest.mark.parametrize("depth, n", [(1, 3), (0, 2), (12, 0)])
def test_enumeration_rejects_degenerate_families(depth, n):
    with pytest.raises(ValueError, match=r"need at least one anchor of depth >= 2, got depths \["):
        enumerate_stitches([depth] * n)


# ---------------------------------------------------------------------------------------------
# FLOPs and parameters (spec §3)


@pytest.fixture(scope="module")
def paper_table():
    return stitch_table("vit-ti-s-b", 1000)


def test_paper_gmacs_within_half_a_percent(paper_table):
    g = paper_table.set_index("stitch_id")["gmacs"]
    for sid, ref in {0: 1.258, 1: 4.608, 2: 17.583, 24: 2.759, 56: 10.048}.items():
        assert g[sid] == pytest.approx(ref, rel=5e-3), sid
    assert len(paper_table) == 71
    # Some stitches cost more than the largest anchor, S->B (1, 0) (~18.3 G) among them.
    t = paper_table.set_index(["front", "end", "j", "k"])
    assert t.loc[(1, 2, 1, 0), "gmacs"] == pytest.approx(18.3, rel=5e-3)
    assert t.loc[(1, 2, 1, 0), "gmacs"] > g[2]
    assert (paper_table["macs_nohead"] < paper_table["macs"]).all()


def test_paper_param_counts_match_timm_and_path_sums(paper_table):
    names = ["vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"]
    with torch.device("meta"):
        vits = [timm.create_model(n, pretrained=False, num_classes=1000) for n in names]
    params = paper_table.set_index("stitch_id")["params"]
    for i, vit in enumerate(vits):
        assert params[i] == sum(p.numel() for p in vit.parameters())

    def numel(*mods):
        return sum(p.numel() for m in mods for p in (m.parameters() if isinstance(m, nn.Module) else [m]))

    # id 24 = Ti blocks 0..7 -> Linear(192, 384) -> S blocks 7..11, with Ti's stem incl. cls/pos.
    ti, s = vits[0], vits[1]
    expected = (
        numel(ti.patch_embed, ti.cls_token, ti.pos_embed, *ti.blocks[:8])
        + 192 * 384
        + 384
        + numel(*s.blocks[7:], s.norm, s.head)
    )
    assert params[24] == expected


def test_per_block_sums_equal_a_direct_count_of_whole_stitches():
    anchors = make_anchors()  # real CPU tensors; stitch_costs counts on a meta copy
    table = stitch_costs(anchors)
    net = StitchedViT(anchors).eval()
    for vit in net.anchors:
        for blk in vit.blocks:
            blk.attn.fused_attn = False  # the attention matmuls are only seen unfused
    x = make_images(1)
    direct = []
    for sid in range(net.num_stitches):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            net(x, sid)
        direct.append(counter.get_total_flops() // 2)  # 2 FLOPs per MAC
    assert table["macs"].tolist() == direct
    # The count is not trivially constant: a deeper stitch of the same pair costs more.
    assert len(set(direct)) > len(direct) // 2


def test_meta_family_shapes():
    anchors = meta_family("embedded", 10)
    assert [a.embed_dim for a in anchors] == [48, 96, 192]
    assert {len(a.blocks) for a in anchors} == {6}
    assert all(p.is_meta for a in anchors for p in a.parameters())
    assert len(stitch_table("embedded", 10)) == 3 + 2 * (3 * 6 - 2)


def test_unknown_family_and_missing_weights_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match="vit-xl") as err:
        family("vit-xl")
    assert all(name in str(err.value) for name in FAMILIES)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_anchor(FAMILIES["embedded"][0], 10, missing)


def test_family_must_grow_in_width():
    small, big = make_anchors(widths=(16, 32))
    with pytest.raises(ValueError, match=r"\[32, 16\]"):
        StitchedViT([big, small])


# ---------------------------------------------------------------------------------------------
# Least-squares initialisation (spec §4)


def test_least_squares_recovers_a_known_affine_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 12, generator=g, dtype=torch.float64)
    w = torch.randn(7, 12, generator=g, dtype=torch.float64)
    b = torch.randn(7, generator=g, dtype=torch.float64)
    w_hat, b_hat = least_squares(x, x @ w.T + b)
    assert w_hat.shape == (7, 12) and b_hat.shape == (7,)
    assert w_hat.dtype == torch.float64
    torch.testing.assert_close(w_hat, w, rtol=0, atol=1e-10)
    torch.testing.assert_close(b_hat, b, rtol=0, atol=1e-10)


def test_least_squares_solves_in_float64_from_float32_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    w = torch.randn(4, 6, generator=g)
    b = torch.randn(4, generator=g)
    w_hat, b_hat = least_squares(x, (x.double() @ w.double().T + b.double()).float())
    torch.testing.assert_close(w_hat, w.double(), rtol=0, atol=1e-5)
    torch.testing.assert_close(b_hat, b.double(), rtol=0, atol=1e-5)


def _block_io(vit: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Inputs and outputs of every block of ``vit`` during timm's own forward, tokens as rows."""
    ins, outs, hooks = [], [], []
    for blk in vit.blocks:
        hooks.append(blk.register_forward_pre_hook(lambda m, a: ins.append(a[0].flatten(0, 1))))
        hooks.append(blk.register_forward_hook(lambda m, a, o: outs.append(o.flatten(0, 1))))
    with torch.no_grad():
        vit(x)
    for h in hooks:
        h.remove()
    return ins, outs


def test_ls_init_shared_layer_is_the_mean_of_per_position_solutions():
    anchors = make_anchors()
    net = StitchedViT(anchors).train()
    images = make_images(16)  # 16 images x 5 tokens = 80 rows > 48 + 1 unknowns per output
    residual = ls_init(net, images)
    assert net.training  # mode restored
    assert set(residual) == {(p, m) for p in (0, 1) for m in range(DEPTH - 1)}
    assert all(0.0 <= r < 1.0 for r in residual.values())
    for p in (0, 1):
        _, front_out = _block_io(anchors[p].eval(), images)  # X: front output of block j
        end_in, _ = _block_io(anchors[p + 1].eval(), images)  # Y: end input of block k
        for layer in range(DEPTH - 1):
            positions = [
                (j, k) for j in range(DEPTH) for k in range(DEPTH) if abs(j - k) <= 1 and max(0, max(j, k) - 1) == layer
            ]
            assert len(positions) == (4 if layer == 0 else 3)
            sols = [least_squares(front_out[j], end_in[k]) for j, k in positions]
            w = torch.stack([s[0] for s in sols]).mean(0)
            b = torch.stack([s[1] for s in sols]).mean(0)
            lin = net.stitch_layers[p][layer]
            torch.testing.assert_close(lin.weight.double(), w, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(lin.bias.double(), b, rtol=1e-4, atol=1e-5)
            # The mean is not any single solution (the rule matters for this test to mean anything).
            assert (sols[0][0] - w).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Stitched forward


def test_anchor_ids_equal_the_plain_timm_forward(anchors, images):
    net = StitchedViT(anchors).eval()
    with torch.no_grad():
        for i, vit in enumerate(anchors):
            assert torch.equal(net(images, i), vit(images))


def test_every_stitch_equals_timm_forwards_joined_by_hooks(anchors, images):
    """Independent composition: run the front anchor's own timm forward and keep block j's output;
    run the end anchor's own timm forward with block k's input replaced by stitching_layer(that)."""
    net = StitchedViT(anchors).eval()
    for s in net.table[len(anchors) :]:
        front, end = anchors[s.front], anchors[s.end]
        layer = net.stitch_layers[s.front][s.layer]
        kept = {}

        def keep(module, args, out):
            kept["h"] = out

        h1 = front.blocks[s.j].register_forward_hook(keep)
        h2 = end.blocks[s.k].register_forward_pre_hook(lambda m, a: (layer(kept["h"]),))
        with torch.no_grad():
            front(images)
            expected = end(images)
        h1.remove()
        h2.remove()
        with torch.no_grad():
            got = net(images, s.stitch_id)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=f"stitch {s.stitch_id}")


def test_stitch_through_identity_layer_into_a_copy_of_itself_equals_the_anchor(images):
    small, big = make_anchors(widths=(16, 32))
    net = StitchedViT([small, big]).eval()
    net.anchors[1] = copy.deepcopy(net.anchors[0])  # end anchor := the front anchor itself
    for layer in range(len(net.stitch_layers[0])):
        net.stitch_layers[0][layer] = nn.Identity()
    with torch.no_grad():
        ref = small(images)
        seen = 0
        for s in net.table:
            if not s.is_anchor and s.k == s.j + 1:
                torch.testing.assert_close(net(images, s.stitch_id), ref, rtol=0, atol=1e-6)
                seen += 1
            elif not s.is_anchor and s.k == s.j:  # block j runs twice: must differ
                assert not torch.allclose(net(images, s.stitch_id), ref, atol=1e-3)
    assert seen == DEPTH - 1


@pytest.mark.parametrize("bad", [23, 1000, -1])
def test_bad_stitch_id_raises_naming_it(anchors, images, bad):
    net = StitchedViT(anchors)
    with pytest.raises(ValueError, match=f"stitch id {bad}"):
        net(images, bad)
