"""Loading artifacts: anchors from local weight files, stitching layers and trained state, with
clear errors for files that do not fit; and the one-shot importance refresh of spec §6."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.anchors import AnchorSpec, FAMILIES
from esta.vit.build import assemble, load_anchor, save_tensors
from esta.sampling import refresh_importance, snip_importance
from esta.vit.stitch import StitchedViT, ls_init

from conftest import make_anchors, make_images


def _spec(width=48, heads=3):
    return AnchorSpec("t", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=width, depth=2,
                                                        num_heads=heads), 7)


def test_local_weights_load_and_keep_or_replace_the_head(tmp_path):
    spec = _spec()
    src = timm.create_model(spec.timm_name, num_classes=7, **spec.kwargs)
    path = tmp_path / "anchor.safetensors"
    save_tensors(src.state_dict(), path, dict(num_classes=7))
    same = load_anchor(spec, 7, path)  # head kept: same classes as stored
    other = load_anchor(spec, 3, path)  # new head for a 3-class task
    for name, p in src.state_dict().items():
        torch.testing.assert_close(same.state_dict()[name], p)
        if not name.startswith("head."):
            torch.testing.assert_close(other.state_dict()[name], p)
    assert other.head.weight.shape == (3, 48)


def test_weight_file_for_another_architecture_names_the_file(tmp_path):
    wrong = timm.create_model("vit_tiny_patch16_224", num_classes=7, **dict(_spec(96, 6).kwargs))
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="wide.safetensors"):
        load_anchor(_spec(), 7, path)


def test_missing_weight_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_anchor(_spec(), 7, tmp_path / "nope.safetensors")


def test_assemble_round_trips_stitch_layers_and_trained_state(tmp_path, monkeypatch):
    anchors = make_anchors()
    files = []
    for i, a in enumerate(anchors):
        files.append(tmp_path / f"a{i}.safetensors")
        save_tensors(a.state_dict(), files[-1], dict(num_classes=5))
    arch = [AnchorSpec(f"a{i}", "vit_tiny_patch16_224", dict(img_size=16, patch_size=8, embed_dim=w, depth=4,
                                                                num_heads=w // 16), 5) for i, w in enumerate((16, 32, 48))]
    monkeypatch.setitem(FAMILIES, "tiny-test", tuple(arch))
    net = StitchedViT(make_anchors())
    ls_init(net, make_images(8))
    save_tensors(net.stitch_layers.state_dict(), tmp_path / "stitch.safetensors")
    model = make_tunable(net, TuningConfig(rank=2))
    with torch.no_grad():
        for p in model.trainable().values():
            p.add_(0.05 * torch.randn_like(p))
    save_tensors(model.trainable(), tmp_path / "state.safetensors")

    again = assemble("tiny-test", 5, files, tmp_path / "stitch.safetensors", TuningConfig(rank=2),
                     state_file=tmp_path / "state.safetensors")
    x = make_images(4, seed=3)
    model.eval(), again.eval()
    with torch.no_grad():
        for sid in (0, 5, 20):
            torch.testing.assert_close(again(x, sid), model(x, sid))
    with pytest.raises(ValueError, match="state.safetensors"):  # trained with rank 2, asked for rank 4
        assemble("tiny-test", 5, files, tmp_path / "stitch.safetensors", TuningConfig(rank=4),
                 state_file=tmp_path / "state.safetensors")


def test_refresh_importance_is_q_of_each_stitch_on_the_batch():
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))
    with torch.no_grad():
        for n, p in model.trainable().items():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # so LoRA contributes to Q too
    x, y = make_images(6), torch.arange(6) % 5
    q = refresh_importance(model, x, y)
    assert all(p.grad is None for p in model.parameters())  # leaves no gradient behind
    for sid in (0, 4, 22):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, sid), y).backward()
        assert q[sid] == pytest.approx(snip_importance(model.importance_params(sid)), rel=1e-6)
    assert len(set(q.round(12))) > 10  # stitches differ
