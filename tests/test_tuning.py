"""PST (shared LoRA + stitch-specific biases + heads) and SN-Net full fine-tuning (spec §5, §7)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import DEPTH, NUM_CLASSES, expected_path, make_anchors, make_images
from torch import nn

import esta.vit.tuning
from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.info import trainable_params
from esta.stitches import enumerate_stitches
from esta.vit.stitch import StitchedViT

N_STITCHES = 3 + 2 * (3 * DEPTH - 2)
# anchors Ti and B, Ti->S (0,0) on layer 0, Ti->S (2,3), S->B (1,0) (k = 0), S->B (3,3) (last)
SAMPLE_IDS = [0, 2, 3, 10, 15, N_STITCHES - 1]


def one_backward(model, stitch_id):
    x = make_images(4)
    y = torch.arange(4) % NUM_CLASSES
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x, stitch_id), y).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture
def pst():
    return make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))


def perturb_lora_b(model, scale=0.05, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def outputs(model, x):
    with torch.no_grad():
        return [model(x, sid) for sid in range(N_STITCHES)]


@pytest.mark.parametrize("sid", SAMPLE_IDS)
def test_pst_gradients_reach_exactly_the_stitch_path(pst, sid):
    lora, biases, head = expected_path(sid)
    own = {f"biases.{sid}." + b.replace(".", ":") for b in biases}
    assert one_backward(pst, sid) == lora | own | {head}
    # The stitch owns a bias copy for exactly the nn.Linear biases on its path, no more.
    assert set(pst.biases[str(sid)].keys()) == {b.replace(".", ":") for b in biases}
    # Θ_s for importance: its own biases plus the LoRA on its path.
    names = {id(p): n for n, p in pst.named_parameters()}
    assert {names[id(p)] for p in pst.importance_params(sid)} == lora | own


def test_pst_trainable_set(pst):
    names = dict(pst.named_parameters())
    expected = (
        {n for n in names if "lora_" in n}
        | {n for n in names if n.startswith("biases.")}
        | {f"net.anchors.{a}.head.weight" for a in range(3)}
    )
    assert set(pst.trainable()) == expected
    assert sum(len(pst.biases[str(s)]) for s in range(N_STITCHES)) == len([n for n in names if n.startswith("biases.")])
    # Stitching layers and anchors (weights and shared biases) are frozen.
    assert not any(p.requires_grad for n, p in names.items() if n.startswith("net.") and n.endswith(".bias"))
    assert not any(p.requires_grad for n, p in names.items() if "base_layer.weight" in n)


def test_fresh_lora_and_bias_copies_leave_every_stitch_unchanged(images):
    net = StitchedViT(make_anchors())
    frozen = copy.deepcopy(net).eval()
    model = make_tunable(net, TuningConfig(rank=4)).eval()
    for sid, (ref, got) in enumerate(zip(outputs(frozen, images), outputs(model, images))):
        assert torch.equal(ref, got), sid


def test_bias_copies_belong_to_one_stitch_and_lora_is_shared(pst, images):
    pst.eval()
    before = outputs(pst, images)
    a, b = 10, 12  # both Ti->S with front blocks 0.. (share Ti block 0)
    key = "anchors:0:blocks:0:attn:qkv:base_layer:bias"
    shared = dict(pst.net.named_parameters())["anchors.0.blocks.0.attn.qkv.base_layer.bias"].clone()
    with torch.no_grad():
        pst.biases[str(a)][key].add_(1.0)
    after = outputs(pst, images)
    changed = {sid for sid in range(N_STITCHES) if not torch.equal(before[sid], after[sid])}
    assert changed == {a}
    assert torch.equal(dict(pst.net.named_parameters())["anchors.0.blocks.0.attn.qkv.base_layer.bias"], shared)
    assert key in pst.biases[str(b)]

    # One shared LoRA module (Ti block 0's qkv) moves every stitch through Ti block 0, and only those.
    with torch.no_grad():
        pst.net.anchors[0].blocks[0].attn.qkv.lora_B["default"].weight.fill_(0.05)
    after_lora = outputs(pst, images)
    changed = {sid for sid in range(N_STITCHES) if not torch.allclose(after[sid], after_lora[sid])}
    through = {s.stitch_id for s in pst.table if s.front == 0}
    assert changed == through


def test_without_stitch_biases_the_shared_linear_biases_train():
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2, stitch_biases=False))
    assert model.biases is None and model.shares_prefix
    net_names = dict(model.net.named_modules())
    linear_biases = {f"net.{n}.bias" for n, m in net_names.items() if isinstance(m, nn.Linear) and m.bias is not None}
    names = dict(model.named_parameters())
    expected = {n for n in names if "lora_" in n} | linear_biases | {f"net.anchors.{a}.head.weight" for a in range(3)}
    assert set(model.trainable()) == expected
    sid = 15
    lora, biases, head = expected_path(sid)
    assert one_backward(model, sid) == lora | {f"net.{b}" for b in biases} | {head}


def test_full_mode_trains_everything():
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(mode="full"))
    names = dict(model.named_parameters())
    assert set(model.trainable()) == set(names)
    assert not any("lora_" in n for n in names)
    assert model.biases is None and model.shares_prefix
    assert model.importance_params(5) == []
    groups = model.param_groups(lr=1e-3, lr_anchor=1e-4, weight_decay=0.0)
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in groups}
    slow = {id(p) for n, p in names.items() if n.startswith("net.anchors.") and ".head." not in n}
    assert by_lr[1e-4] == slow
    assert by_lr[1e-3] == {id(p) for p in names.values()} - slow


@pytest.mark.parametrize("alpha, scale", [(None, 1.0), (8.0, 4.0)])
def test_lora_update_is_b_a_x_scaled_by_alpha_over_rank(alpha, scale):
    """alpha = r by default [decision], so the LoRA update is exactly B A x."""
    model = make_tunable(StitchedViT(make_anchors(widths=(16, 32))), TuningConfig(rank=2, alpha=alpha))
    qkv = model.net.anchors[1].blocks[2].attn.qkv
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        qkv.lora_A["default"].weight.copy_(torch.randn(2, 32, generator=g))
        qkv.lora_B["default"].weight.copy_(torch.randn(96, 2, generator=g))
        x = torch.randn(3, 5, 32, generator=g)
        delta = qkv(x) - qkv.get_base_layer()(x)
        expected = scale * x @ qkv.lora_A["default"].weight.T @ qkv.lora_B["default"].weight.T
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-4)


def test_pst_param_groups_put_everything_at_lr_even_with_lr_anchor(pst):
    groups = pst.param_groups(lr=1e-3, lr_anchor=1e-4, weight_decay=1e-4)
    assert {g["lr"] for g in groups} == {1e-3}
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in pst.trainable().values())


@pytest.mark.parametrize("mode", ["pst", "full"])
def test_no_weight_decay_on_1d_params_and_pos_cls_unless_decay_1d(mode):
    """timm's rule: biases, LayerNorm, stitch biases, pos_embed and cls_token are not decayed."""
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(mode=mode, rank=2))
    trainable = model.trainable()
    exempt = {id(p) for n, p in trainable.items() if p.ndim <= 1 or n.endswith(("pos_embed", "cls_token"))}
    assert exempt and len(exempt) < len(trainable)
    if mode == "pst":
        assert {id(p) for n, p in trainable.items() if n.startswith("biases.")} <= exempt
    else:
        assert {id(trainable[f"net.anchors.{i}.{k}"]) for i in range(3) for k in ("pos_embed", "cls_token")} <= exempt
    groups = model.param_groups(lr=1e-3, lr_anchor=1e-4, weight_decay=0.05)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(p) for p in trainable.values()} - exempt
    assert groups[0]["lr"] == 1e-3 and groups[0]["weight_decay"] == 0.05  # the group the log reports
    everything = model.param_groups(lr=1e-3, lr_anchor=1e-4, weight_decay=0.05, decay_1d=True)
    assert {id(p) for g in everything if g["weight_decay"] == 0.05 for p in g["params"]} == {
        id(p) for p in trainable.values()}


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(mode="lora"), "'lora'"),
        (dict(rank=0), "0"),
        (dict(rank=-4), "-4"),
        (dict(targets="mlp_only"), "'mlp_only'"),
        (dict(dropout=1.5), "1.5"),
    ],
)
def test_bad_config_raises_naming_the_value(kwargs, named):
    with pytest.raises(ValueError, match=named):
        TuningConfig(**kwargs)


def test_lora_target_matching_no_module_raises_naming_it(monkeypatch):
    monkeypatch.setitem(esta.vit.tuning.LORA_TARGETS, "nothing", r".*\.no_such_module")
    net = StitchedViT(make_anchors(widths=(16, 32)))
    with pytest.raises(ValueError, match="no_such_module"):
        make_tunable(net, TuningConfig(targets="nothing"))


def expected_pst_params(widths=(192, 384, 768), depth=12, classes=100, r=8) -> int:
    """Hand count for PST from the spec: LoRA on qkv (w -> 3w) and proj (w -> w) of every block and
    on every stitching layer, one head weight per anchor, and per stitch a copy of every Linear bias
    on its path (per block qkv 3w + proj w + fc1 4w + fc2 w = 9w; stitching layer; head)."""
    lora = sum(depth * r * ((w + 3 * w) + (w + w)) for w in widths)
    lora += sum((depth - 1) * r * (wf + we) for wf, we in zip(widths, widths[1:]))
    heads = sum(classes * w for w in widths)
    biases = sum(depth * 9 * w + classes for w in widths)
    for wf, we in zip(widths, widths[1:]):
        for s in enumerate_stitches([depth] * 2)[2:]:
            biases += (s.j + 1) * 9 * wf + (depth - s.k) * 9 * we + we + classes
    return lora + heads + biases


def test_paper_trainable_parameter_counts():
    counts = trainable_params("vit-ti-s-b", 100, rank=8)
    assert 3_000_000 <= counts["esta"] <= 6_000_000
    assert counts["esta"] == expected_pst_params()
    assert counts["snnet"] > 100_000_000
    # SN-Net: three ViTs with 100-class heads (timm sizes) + 2 x 11 stitching layers with bias.
    vit = [5_717_416 - 900 * 193, 22_050_664 - 900 * 385, 86_567_656 - 900 * 769]
    layers = 11 * (192 * 384 + 384) + 11 * (384 * 768 + 768)
    assert counts["snnet"] == sum(vit) + layers


def test_paper_lora_params_in_the_anchors():
    from esta.vit.anchors import meta_family

    with torch.device("meta"):
        model = make_tunable(StitchedViT(meta_family("vit-ti-s-b", 100)), TuningConfig(rank=8))
    per_anchor = [
        sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"net.anchors.{a}.") and "lora_" in n)
        for a in range(3)
    ]
    assert per_anchor == [110_592, 221_184, 442_368]
