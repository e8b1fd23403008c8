"""Anchor families from timm names (spec §13): SN-Net's table for DeiT-Ti/S/B, the depth rule for
anchors of different depths, the refusal of families that cannot be stitched, EVA without RoPE, and
weight files of any head size in every format register_weights reads."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from esta.__main__ import main
from esta.stitches import enumerate_stitches
from esta.vit.anchors import build_anchor, build_family, family, family_at
from esta.vit.export import merged_path
from esta.vit.stitch import StitchedViT, ls_init, stitch_costs
from esta.vit.timm_family import check_timm_family, config_family, stored_classes, timm_specs
from esta.vit.tuning import TuningConfig, make_tunable

DEIT = ["deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224"]


def tiny(widths=(16, 32, 48), depths=(2, 2, 4), name="vit_small_patch16_224", **extra) -> list[dict]:
    """anchors.timm entries of a toy family: 16 px, patch 8, head dim 16."""
    return [dict(name=name, label=f"w{w}", kwargs=dict(img_size=16, patch_size=8, embed_dim=w, depth=d,
                                                       num_heads=w // 16, **extra))
            for w, d in zip(widths, depths)]


def test_deit_from_timm_names_is_snnets_71_stitch_table(capsys):
    """`python -m esta info --timm deit_tiny... deit_small... deit_base... --num-classes 1000`: SN-Net's
    released table (ids, positions, FLOPs within 0.5 %)."""
    assert main(["info", "--timm", *DEIT, "--num-classes", "1000", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_stitches"] == 71 and info["rule"] == "paired" and info["depths"] == [12, 12, 12]
    rows = info["stitches"]
    assert [(r["stitch_id"], r["front"], r["end"], r["j"], r["k"], r["layer"], r["depth"]) for r in rows] == \
        [(s.stitch_id, s.front, s.end, s.j, s.k, s.layer, s.depth) for s in enumerate_stitches([12] * 3)]
    assert (rows[24]["j"], rows[24]["k"], rows[56]["j"], rows[56]["k"]) == (7, 7, 6, 7)
    for sid, gmacs in {0: 1.258, 1: 4.608, 2: 17.583, 24: 2.759, 56: 10.048}.items():
        assert rows[sid]["gmacs"] == pytest.approx(gmacs, rel=5e-3), sid
    assert rows[0]["params"] == sum(p.numel() for p in timm.create_model(DEIT[0], num_classes=1000).parameters())


def test_depth_rule_for_anchors_of_different_depths():
    specs = timm_specs(tiny())
    check_timm_family(specs)
    torch.manual_seed(0)
    net = StitchedViT(build_family(specs, 5)).eval()
    expected = enumerate_stitches([2, 2, 4], rule="depth")
    assert net.rule == "depth" and net.depths == [2, 2, 4] and net.table == expected
    # S -> B: block 0 feeds B's block 1; B -> L: block 0 feeds L's block round(1 * 4 / 2) = 2
    assert [(s.front, s.j, s.k) for s in net.table[3:]] == [(0, 0, 1), (1, 0, 2)]
    assert [len(layers) for layers in net.stitch_layers] == [1, 1]
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    residual = ls_init(net, x)
    assert set(residual) == {(0, 0), (1, 0)}
    # costs summed per part equal a direct count of each whole stitch, and the path's parameters
    table = stitch_costs(list(net.anchors), [s.name for s in specs])
    for vit in net.anchors:
        for blk in vit.blocks:
            blk.attn.fused_attn = False
    named = dict(net.named_parameters())
    for s in net.table:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = net(x[:1], s.stitch_id)
        assert out.shape == (1, 5)
        assert table.loc[s.stitch_id, "macs"] == counter.get_total_flops() // 2
        on_path = sum(p.numel() for n, p in named.items() if net.on_path(n, s.stitch_id))
        assert table.loc[s.stitch_id, "params"] == on_path, s
    assert table.loc[4, "depth"] == 1 + (4 - 2)  # B's block 0, then L's blocks 2..3


def test_equal_depths_keep_snnets_paired_rule():
    net = StitchedViT(build_family(timm_specs(tiny(depths=(3, 3, 3))), 5))
    assert net.rule == "paired" and net.table == enumerate_stitches([3, 3, 3], rule="paired")
    assert len(net.table) == 3 + 2 * (3 * 3 - 2)


REFUSED = [
    (["deit_tiny_patch16_224", "deit_small_distilled_patch16_224"], "deit_small_distilled_patch16_224", "distilled"),
    (["resnet50"], "resnet50", "hierarchical or convolutional"),
    (["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"], "swin_tiny_patch4_window7_224", "not a plain ViT"),
    (["vit_base_r50_s16_224"], "vit_base_r50_s16_224", "convolutional stem"),
    (["vit_base_patch16_siglip_224"], "vit_base_patch16_siglip_224", "pools by attention"),
    (["eva02_tiny_patch14_224"], "eva02_tiny_patch14_224", "rotary position embeddings"),
    (["deit_tiny_patch16_224", "vit_small_patch32_224"], "vit_small_patch32_224", "different patch size"),
    (["deit_tiny_patch16_224", "deit_base_patch16_384"], "deit_base_patch16_384", "different image size"),
    (["deit_small_patch16_224", "deit_tiny_patch16_224"], "deit_tiny_patch16_224", "increasing width"),
    (["deit_tiny_patch16_224", "no_such_model_224"], "no_such_model_224", "not a timm model name"),
]


@pytest.mark.parametrize("models, culprit, reason", REFUSED, ids=[r[2] for r in REFUSED])
def test_unstitchable_families_are_refused_naming_model_and_reason(models, culprit, reason):
    with pytest.raises(ValueError) as err:
        config_family("timm", models, 224)
    assert culprit in str(err.value) and reason in str(err.value), str(err.value)


def test_prefix_tokens_must_agree():
    """A register-token ViT beside a plain one: same shapes otherwise, different prefix tokens."""
    entries = tiny(depths=(2, 2))[:1] + tiny(widths=(32,), depths=(2,), reg_tokens=4)
    with pytest.raises(ValueError, match=r"w16 and w32 cannot be stitched: different prefix tokens, 1 vs 5"):
        check_timm_family(timm_specs(entries))


def test_config_family_is_the_name_for_table_families_and_checked_rows_for_timm():
    assert config_family("embedded", None, 32) == "embedded"
    specs = config_family("timm", DEIT, 32)
    assert [s.timm_name for s in specs] == DEIT and [s.pretrained_classes for s in specs] == [1000] * 3
    assert {s.kwargs.get("img_size") for s in family(family_at(specs, 32))} == {32}


def test_eva_without_rope_keeps_the_block_interface():
    """EVA-01-style models stitch like ViTs: the stitched anchor is timm's own model, a LoRA on the fused
    qkv acts (EVA would otherwise apply qkv's weight directly), and the export matches."""
    entries = [dict(name="eva_giant_patch14_224", kwargs=dict(img_size=16, patch_size=8, embed_dim=w, depth=d,
                                                                 num_heads=w // 16, mlp_ratio=4.0)) | {"label": f"e{w}"}
               for w, d in ((16, 2), (32, 3))]
    specs = timm_specs(entries)
    check_timm_family(specs)
    torch.manual_seed(0)
    anchors = build_family(specs, 5)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    net = StitchedViT([a.eval() for a in anchors])
    with torch.no_grad():
        torch.testing.assert_close(net(x, 1), anchors[1](x))
    ls_init(net, x)
    model = make_tunable(net, TuningConfig(rank=2)).eval()
    before = {s: model(x, s) for s in range(net.num_stitches)}
    with torch.no_grad():
        for n, p in model.trainable().items():
            if "attn.qkv.lora_B" in n:
                p.normal_()
    for s in before:
        after = model(x, s)
        assert not torch.allclose(before[s], after), s  # the LoRA on qkv is used
        torch.testing.assert_close(merged_path(model, s).eval()(x), after, atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(3)
    spec = timm_specs(tiny(widths=(32,), depths=(2,)))[0]
    return spec, timm.create_model(spec.timm_name, num_classes=11, **spec.kwargs)


@pytest.mark.parametrize("suffix, wrap", [(".safetensors", None), (".pth", "model"), (".bin", None),
                                          (".pth", "state_dict")])
def test_weight_files_of_any_head_size_load_whole(small, tmp_path, suffix, wrap):
    spec, src = small
    sd = src.state_dict()
    path = tmp_path / f"anchor{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save({wrap: sd} if wrap else sd, path)
    assert spec.pretrained_classes == 1000 and stored_classes(path) == 11  # the file's, not the cfg's
    anchor = build_anchor(spec, stored_classes(path), path, keep_head=True)
    for name, tensor in sd.items():
        torch.testing.assert_close(anchor.state_dict()[name], tensor)


def test_headless_file_and_npz_head_size(small, tmp_path):
    spec, src = small
    headless = {k: v for k, v in src.state_dict().items() if not k.startswith("head.")}
    save_file({k: v.contiguous() for k, v in headless.items()}, str(tmp_path / "backbone.safetensors"))
    assert stored_classes(tmp_path / "backbone.safetensors") == 0
    anchor = build_anchor(spec, 0, tmp_path / "backbone.safetensors", keep_head=True)
    torch.testing.assert_close(anchor.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    np.savez(tmp_path / "jax.npz", **{"head/kernel": np.zeros((32, 7), np.float32)})
    assert stored_classes(tmp_path / "jax.npz") == 7


def test_pickled_code_in_a_weight_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "anchor.pth"
    path.write_bytes(pickle.dumps({"model": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="weights_only") as err:
        stored_classes(path)
    assert str(path) in str(err.value) and not marker.exists()
