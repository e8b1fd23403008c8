"""PST on each PEFT technique (esta.peft.method: LoRA, DoRA, IA³ from peft; Houlsby Adapter and
AdaptFormer from esta.vit.adapters) and the three-stage order (esta.vit.stages)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEPTH, NUM_CLASSES, make_anchors, make_images, tiny_arch

from esta.vit.export import export_stitch, load_stitch
from esta.vit.stages import adapted_anchor_biases, start_from_adapted, stitch_layer_weights
from esta.stitches import enumerate_stitches
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import PEFT_METHODS, TuningConfig, make_tunable
from esta.tunable import count_trainable

N_STITCHES = 3 + 2 * (3 * DEPTH - 2)
SAMPLE_IDS = [0, 2, 3, 15, N_STITCHES - 1]  # anchors Ti and B, a Ti->S stitch, S->B stitches

# Per method, the parameters PEFT adds to one block and the module biases a stitch owns there,
# written out by hand from how each technique wraps timm's Block (not derived from the code).
LORA_AB = ("lora_A.default.weight", "lora_B.default.weight")
ADAPTER_P = ("adapter_down.weight", "adapter_down.bias", "adapter_up.weight", "adapter_up.bias")
BLOCK = {
    "lora": ([f"attn.{m}.{p}" for m in ("qkv", "proj") for p in LORA_AB],
             ["attn.qkv.base_layer.bias", "attn.proj.base_layer.bias", "mlp.fc1.bias", "mlp.fc2.bias"]),
    "dora": ([f"attn.{m}.{p}" for m in ("qkv", "proj") for p in (*LORA_AB, "lora_magnitude_vector.default.weight")],
             ["attn.qkv.base_layer.bias", "attn.proj.base_layer.bias", "mlp.fc1.bias", "mlp.fc2.bias"]),
    "ia3": (["attn.qkv.ia3_l.default", "mlp.fc2.ia3_l.default"],
            ["attn.qkv.base_layer.bias", "attn.proj.bias", "mlp.fc1.bias", "mlp.fc2.base_layer.bias"]),
    "adapter": ([f"{m}.{p}" for m in ("attn.proj", "mlp.fc2") for p in ADAPTER_P],
                ["attn.qkv.bias", "attn.proj.base_layer.bias", "mlp.fc1.bias", "mlp.fc2.base_layer.bias"]),
    "adaptformer": ([f"mlp.{p}" for p in ADAPTER_P],
                    ["attn.qkv.bias", "attn.proj.bias", "mlp.base_layer.fc1.bias", "mlp.base_layer.fc2.bias"]),
}


def expected(method: str, stitch_id: int) -> tuple[set[str], set[str], str]:
    """(PEFT parameter names, own bias names, head weight) on one stitch's path."""
    s = enumerate_stitches([DEPTH] * 3)[stitch_id]
    blocks = ([(s.front, b) for b in range(DEPTH)] if s.is_anchor else
              [(s.front, b) for b in range(s.j + 1)] + [(s.end, b) for b in range(s.k, DEPTH)])
    peft, biases = set(), set()
    for a, b in blocks:
        blk = f"anchors.{a}.blocks.{b}"
        peft |= {f"net.{blk}.{n}" for n in BLOCK[method][0]}
        biases |= {f"{blk}.{n}" for n in BLOCK[method][1]}
    if not s.is_anchor:  # the stitching layer keeps a plain LoRA in every method
        layer = f"stitch_layers.{s.front}.{s.layer}"
        peft |= {f"net.{layer}.{p}" for p in LORA_AB}
        biases.add(f"{layer}.base_layer.bias")
    biases.add(f"anchors.{s.end}.head.bias")
    return peft, biases, f"net.anchors.{s.end}.head.weight"


def tunable(method: str, anchors=None, **kw):
    torch.manual_seed(0)
    return make_tunable(StitchedViT(anchors or make_anchors()), TuningConfig(rank=2, peft=method, **kw))


def perturb(model, scale=0.05, seed=3):
    """As after some training: every trainable parameter moved (adapter up-projections off zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def frozen_outputs():
    net, x = StitchedViT(make_anchors()), make_images(4)
    with torch.no_grad():
        return x, {sid: net(x, sid) for sid in SAMPLE_IDS}


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_fresh_model_equals_the_frozen_anchors(method, frozen_outputs):
    x, ref = frozen_outputs
    model = tunable(method).eval()
    with torch.no_grad():
        for sid in SAMPLE_IDS:
            assert torch.equal(model(x, sid), ref[sid]), (method, sid)


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_a_step_on_a_stitch_reaches_exactly_its_peft_biases_and_head(method):
    model = tunable(method)
    trainable = set(model.trainable())
    # nothing of the anchors or stitching layers trains but PEFT modules, heads and stitch biases
    assert all(n.startswith("biases.") or n.endswith("head.weight") or any(t in n for t in ("lora_", "ia3_", "adapter_"))
               for n in trainable), sorted(trainable)[:5]
    x, y = make_images(4), torch.arange(4) % NUM_CLASSES
    for sid in SAMPLE_IDS:
        peft, biases, head = expected(method, sid)
        own = {f"biases.{sid}." + b.replace(".", ":") for b in biases}
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, sid), y).backward()
        got = {n for n, p in model.named_parameters() if p.grad is not None}
        assert got == peft | own | {head}, (method, sid, sorted(got ^ (peft | own | {head}))[:4])
        names = {id(p): n for n, p in model.named_parameters()}
        assert {names[id(p)] for p in model.importance_params(sid)} == peft | own


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_export_round_trip_equals_the_stitched_model(method, tmp_path):
    model = perturb(tunable(method)).eval()
    x = make_images(4)
    arch = [dict(name=f"a{i}", **a) for i, a in enumerate(tiny_arch())]
    for sid in (0, 3, N_STITCHES - 1):
        with torch.no_grad():
            want = model(x, sid)
            got = load_stitch(export_stitch(model, sid, tmp_path, arch))(x)
        assert (got - want).abs().max().item() <= 1e-4, (method, sid)


def test_default_widths_give_similar_trainable_counts():
    """Trainable PEFT parameters per block at the defaults (LoRA r = 8): within a factor 1.3 of
    LoRA for DoRA and both adapters; IA³ is a vector per module, far smaller by design."""
    counts = {}
    for method in PEFT_METHODS:
        model = make_tunable(StitchedViT(make_anchors()), TuningConfig(peft=method, stitch_biases=False))
        counts[method] = sum(p.numel() for n, p in model.trainable().items()
                             if ".blocks." in n and any(t in n for t in ("lora_", "ia3_", "adapter_")))
    for method in ("dora", "adapter", "adaptformer"):
        assert 1 / 1.3 <= counts[method] / counts["lora"] <= 1.3, counts
    assert counts["ia3"] < counts["lora"] / 4, counts


# ------------------------------------------------------------------------------------------------
# Three-stage PST (esta.vit.stages)


def adapted_alone(method: str, anchors) -> list[torch.nn.Module]:
    """Each anchor as a one-anchor PST model, perturbed as after stage-1 training."""
    return [perturb(tunable(method, [a]), seed=10 + i).eval() for i, a in enumerate(anchors)]


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_three_stage_starts_from_the_adapted_anchors(method):
    anchors = make_anchors()
    alone = adapted_alone(method, make_anchors())
    model = tunable(method, anchors).eval()
    n = start_from_adapted(model, [{k: v.detach() for k, v in m.trainable().items()} for m in alone],
                           [f"anchor{i}" for i in range(3)])
    assert n > 0
    x = make_images(4)
    table = model.table
    with torch.no_grad():
        for a in range(3):  # an anchor of the stitched model is the anchor PST adapted alone
            assert torch.allclose(model(x, a), alone[a](x, 0), atol=1e-6)
        # a stitch starts with its front blocks' biases from its front anchor and its end's from its end
        s = next(s for s in table if not s.is_anchor and s.front == 1)
        own = model.biases_for(s.stitch_id)
        front = alone[1].biases_for(0)
        end = alone[2].biases_for(0)
        for name, p in own.items():
            if name.startswith("anchors.1."):
                assert torch.equal(p, front[name.replace("anchors.1.", "anchors.0.", 1)])
            elif name.startswith("anchors.2."):
                assert torch.equal(p, end[name.replace("anchors.2.", "anchors.0.", 1)])
        # LS init reads the adapted anchors' features block by block: the same block outputs as the
        # one-anchor model's forward (recorded by hooks while it runs with its own biases)
        before = {n: q.detach().clone() for n, q in model.net.named_parameters() if n.endswith("bias")}
        with adapted_anchor_biases(model) as net:
            states = net.front_states(x, 1)
            changed = [n for n, q in net.named_parameters() if n in before and not torch.equal(q, before[n])]
        assert changed  # inside, the anchors' module biases were their adapted ones
        after = {n: q for n, q in model.net.named_parameters() if n.endswith("bias")}
        assert all(torch.equal(after[n], v) for n, v in before.items())  # and restored on exit
        recorded = []
        hooks = [blk.register_forward_hook(lambda m, i, o: recorded.append(o)) for blk in alone[1].net.anchors[0].blocks]
        alone[1](x, 0)
        for h in hooks:
            h.remove()
        assert len(states) == len(recorded) == DEPTH
        for got, exp in zip(states, recorded):
            assert torch.allclose(got, exp, atol=1e-6)
    assert set(stitch_layer_weights(model)) == set(StitchedViT(make_anchors()).stitch_layers.state_dict())


def test_three_stage_refuses_a_state_of_other_settings():
    anchors = make_anchors()
    alone = adapted_alone("adapter", make_anchors())
    model = tunable("lora", anchors)
    with pytest.raises(ValueError, match="anchor0"):
        start_from_adapted(model, [{k: v.detach() for k, v in m.trainable().items()} for m in alone],
                           [f"anchor{i}" for i in range(3)])


def test_count_trainable_matches_trainable_dict():
    model = tunable("adaptformer")
    assert count_trainable(model) == sum(p.numel() for p in model.trainable().values())
