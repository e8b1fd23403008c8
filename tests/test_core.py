"""The method core (``esta/*.py``) is written once for both families (issue 21): it imports no
family, the LLaMA family imports nothing of the ViT family, both families implement the training
interface explicitly, and they report the same quantities in the same units."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NUM_CLASSES, make_anchors, make_images
from test_llm_stitch import VOCAB, left_padded_batch, tiny_anchors

from esta.analysis import gradient_cosines, lora_gradients
from esta.llm.pretrain import FullLlama
from esta.llm.stitch import StitchedLlama
from esta.llm.tuning import make_tunable as llama_tunable
from esta.sampling import refresh_importance, snip_importance
from esta.tunable import Trainable, TunableStitches, count_trainable
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TuningConfig, make_tunable

ESTA = Path(__file__).resolve().parents[1] / "esta"


def esta_imports(path: Path) -> set[str]:
    """Every esta module ``path`` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("esta")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("esta"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_core_imports_no_family_and_llm_imports_nothing_of_vit():
    # __main__ is the entry point: the one module that dispatches to both families by name
    core = [f for f in ESTA.glob("*.py") if f.name != "__main__.py"]
    assert len(core) >= 10
    bad = {f.name: sorted(m for m in esta_imports(f) if m.startswith(("esta.vit", "esta.llm"))) for f in core}
    assert not any(bad.values()), bad
    llm = {f.name: sorted(m for m in esta_imports(f) if m.startswith("esta.vit")) for f in ESTA.glob("llm/*.py")}
    assert not any(llm.values()), llm


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from esta.vit.anchors import family\n    import esta.llm.build\n")
    assert {"esta.vit.anchors", "esta.llm.build"} <= esta_imports(f)


def tiny_llama():
    torch.manual_seed(0)
    model = llama_tunable(StitchedLlama(tiny_anchors()))
    with torch.no_grad():  # as after some training: LoRA B and the biases non-zero
        for p in model.trainable().values():
            p.add_(0.05 * torch.randn_like(p))
    return model


def llama_batch():
    ids, mask = left_padded_batch(2)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def test_both_families_implement_the_training_interface():
    vit = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))
    full = make_tunable(StitchedViT(make_anchors()), TuningConfig(mode="full"))
    llm = tiny_llama()
    pretrain = FullLlama(tiny_anchors()[0])
    for model in (vit, full, llm):
        assert isinstance(model, TunableStitches)
    assert isinstance(pretrain, Trainable)
    counts = [count_trainable(m) for m in (vit, full, llm, pretrain)]
    assert all(type(c) is int and c > 0 for c in counts)  # one return type for every family
    assert counts[2] == sum(p.numel() for p in llm.trainable().values())


def test_importance_refresh_and_gradient_interference_take_the_family_batch():
    """Both analyses run on the LLaMA family with its (ids, mask, labels) batches (issue 21)."""
    model = tiny_llama()
    batch = llama_batch()
    q = refresh_importance(model, batch)
    assert q.shape == (model.net.num_stitches,) and (q > 0).all()
    # refresh computes Q(s) of the loss on this batch for each stitch, as a training step would
    model.zero_grad(set_to_none=True)
    model.loss(batch, 3).backward()
    assert q[3] == pytest.approx(snip_importance(model.importance_params(3)).item(), rel=1e-9)
    grads = lora_gradients(model, batch, 3)
    assert grads and all(".lora_" not in m for m in grads)
    cos = gradient_cosines(model, batch, [0, 2, 3])
    assert len(cos) > 0 and cos["cosine"].between(-1 - 1e-9, 1 + 1e-9).all()
    # and the ViT family, with (images, labels)
    vit = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))
    x, y = make_images(4), torch.arange(4) % NUM_CLASSES
    assert refresh_importance(vit, (x, y)).shape == (vit.net.num_stitches,)


def test_macs_carry_their_unit_in_both_families():
    from esta.llm.costs import stitch_table as llm_table
    from esta.vit.info import stitch_table

    assert set(stitch_table("embedded", 10)["macs_unit"]) == {"image"}
    assert set(llm_table("tiny")["macs_unit"]) == {"token"}


def test_provenance_names_the_libraries_the_job_used():
    """An LLM job records transformers and tokenizers and never imports timm; a ViT job records timm."""
    code = "import json; {job}; from esta.runtime import provenance; print(json.dumps(provenance()))"
    jobs = dict(llm="from esta.llm.costs import stitch_table; stitch_table('tiny')",
                vit="from esta.vit.info import stitch_table; stitch_table('embedded', 10)")
    out = {}
    for family, job in jobs.items():
        proc = subprocess.run([sys.executable, "-c", code.format(job=job)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        out[family] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"transformers", "tokenizers"} <= set(out["llm"]) and "timm" not in out["llm"]
    assert "timm" in out["vit"]


def test_llm_rule_is_checked_before_any_job():
    from esta.llm.anchors import check_rule

    check_rule("tiny", "depth")
    with pytest.raises(ValueError, match=r"llm.rule = 'paired' does not fit the LLM family 'tiny'.*equal depth"):
        check_rule("tiny", "paired")


def test_paired_rule_reaches_the_llm_stitched_model(tmp_path):
    """``llm.rule: paired`` builds SN-Net's table on equal-depth anchors (shared stitching layers)."""
    anchors = tiny_anchors()
    cfg = anchors[1].config
    cfg.num_hidden_layers = 4
    anchors[1] = type(anchors[1])(cfg)
    net = StitchedLlama(anchors, rule="paired")
    assert net.num_stitches == 2 + (3 * 4 - 2)
    assert len(net.stitch_layers[0]) == 3  # 3 windows -> 3 shared layers
    # a window's stitches run through its one shared stitching layer: changing it moves every one of
    # them and no anchor
    ids, mask = left_padded_batch()
    shared = [s.stitch_id for s in net.table if not s.is_anchor and s.layer == 0]
    other = [s.stitch_id for s in net.table if not s.is_anchor and s.layer != 0]
    assert len(shared) > 1 and other
    with torch.no_grad():
        before = {sid: net(ids, mask, sid) for sid in [0, 1, *shared, *other]}
        net.stitch_layers[0][0].weight.add_(0.5)
        for sid in shared:
            assert not torch.allclose(net(ids, mask, sid), before[sid]), sid
        for sid in [0, 1, *other]:
            assert torch.equal(net(ids, mask, sid), before[sid]), sid
    assert before[0].shape[-1] == VOCAB
