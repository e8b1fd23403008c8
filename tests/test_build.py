"""Loading artifacts: anchors from local weight files, stitching layers and trained state, with
clear errors for files that do not fit; and the one-shot importance refresh of spec §6."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from esta.vit.tuning import TuningConfig, make_tunable
from esta.vit.anchors import FAMILIES, AnchorSpec, build_anchor, build_family
from esta.vit.build import assemble, fixed_batch
from esta.tensors import load_trainable, save_tensors
from esta.sampling import refresh_importance, snip_importance
from esta.vit.stitch import StitchedViT, ls_init

from conftest import make_anchors, make_images


def _spec(width=48, heads=3):
    return AnchorSpec("t", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=width, depth=2,
                                                        num_heads=heads), 7)


def _perturbed(spec, classes):
    src = timm.create_model(spec.timm_name, num_classes=classes, **spec.kwargs)
    with torch.no_grad():
        src.head.bias.normal_()  # timm starts head biases at zero: a kept head must show
    return src


def test_local_weights_load_and_keep_or_replace_the_head(tmp_path):
    spec = _spec()
    src = _perturbed(spec, 7)
    path = tmp_path / "anchor.safetensors"
    save_tensors(src.state_dict(), path, dict(num_classes=7, task="vtab/a"))
    same = build_anchor(spec, 7, path, keep_head=True)
    new = build_anchor(spec, 7, path)  # same class count, head not kept: new
    other = build_anchor(spec, 3, path)  # new head for a 3-class task
    for name, p in src.state_dict().items():
        torch.testing.assert_close(same.state_dict()[name], p)
        if not name.startswith("head."):
            torch.testing.assert_close(other.state_dict()[name], p)
            torch.testing.assert_close(new.state_dict()[name], p)
    assert other.head.weight.shape == (3, 48)
    assert not torch.equal(new.head.bias, src.head.bias) and not new.head.bias.any()  # timm's init: zeros
    with pytest.raises(ValueError, match="anchor.safetensors"):
        build_anchor(spec, 3, path, keep_head=True)  # a kept head must fit the task


def test_head_is_kept_only_for_the_task_it_was_trained_on(tmp_path, monkeypatch):
    """An upstream head of 5 classes is re-initialised for a 5-class task; a head trained on the
    task (SN-Net's adapted anchors) is kept, through build_family and assemble alike."""
    arch = tuple(AnchorSpec(f"a{w}", "vit_tiny_patch16_224", dict(img_size=32, patch_size=8, embed_dim=w, depth=2,
                                                                  num_heads=w // 16), 5) for w in (16, 32, 48))
    monkeypatch.setitem(FAMILIES, "tiny-head-test", arch)
    files = {}
    for task in ("upstream", "vtab/svhn"):
        files[task] = [tmp_path / f"{task.replace('/', '-')}{i}.safetensors" for i in range(3)]
        for spec, f in zip(arch, files[task]):
            save_tensors(_perturbed(spec, 5).state_dict(), f, dict(num_classes=5, task=task))
    for task, keep in (("upstream", False), ("vtab/svhn", True)):
        heads = [load_file(str(f))["head.bias"] for f in files[task]]
        for anchors in (build_family("tiny-head-test", 5, files[task], task="vtab/svhn"),
                        assemble("tiny-head-test", 5, files[task], task="vtab/svhn").net.anchors):
            assert [torch.equal(a.head.bias, h) for a, h in zip(anchors, heads)] == [keep] * 3, task
    # without a task nothing is kept, not even a task's own head
    assert not any(a.head.bias.any() for a in build_family("tiny-head-test", 5, files["vtab/svhn"]))


def test_weight_file_for_another_architecture_names_the_file(tmp_path):
    wrong = timm.create_model("vit_tiny_patch16_224", num_classes=7, **dict(_spec(96, 6).kwargs))
    path = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(path))
    with pytest.raises(ValueError, match="wide.safetensors"):
        build_anchor(_spec(), 7, path)


def test_missing_weight_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_anchor(_spec(), 7, tmp_path / "nope.safetensors")


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
    q = refresh_importance(model, (x, y))
    assert all(p.grad is None for p in model.parameters())  # leaves no gradient behind
    for sid in (0, 4, 22):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, sid), y).backward()
        assert q[sid] == pytest.approx(snip_importance(model.importance_params(sid)).item(), rel=1e-6)
    assert len(set(q.round(12))) > 10  # stitches differ


class _Counting(torch.utils.data.Dataset):
    """Items (image, label) made on access, counting how many were read (decoded)."""

    def __init__(self, n):
        self.n, self.reads = n, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads.append(i)
        return torch.full((3, 4, 4), float(i)), i % 3


def test_fixed_batch_reads_only_the_items_it_returns_and_is_seeded():
    data = _Counting(1000)
    x, y = fixed_batch(data, 8, seed=3)
    assert len(data.reads) == 8 and len(set(data.reads)) == 8  # not the whole split
    assert x.shape == (8, 3, 4, 4) and y.tolist() == [i % 3 for i in data.reads]
    assert x[:, 0, 0, 0].tolist() == [float(i) for i in data.reads]  # images and labels stay paired
    again = _Counting(1000)
    assert torch.equal(fixed_batch(again, 8, seed=3)[0], x) and again.reads == data.reads
    other = _Counting(1000)
    fixed_batch(other, 8, seed=4)
    assert other.reads != data.reads
    assert len(fixed_batch(_Counting(5), 8, seed=3)[1]) == 5  # a split smaller than n: all of it


def test_load_trainable_copies_a_fitting_state_and_names_the_source_otherwise():
    model = make_tunable(StitchedViT(make_anchors()), TuningConfig(rank=2))
    state = {k: torch.randn_like(v) for k, v in model.trainable().items()}
    load_trainable(model, state, "s.safetensors")
    assert all(torch.equal(model.trainable()[k], v) for k, v in state.items())
    k = next(iter(state))
    with pytest.raises(ValueError, match=r"snap.safetensors \(snapshot 3\) does not fit the model.*missing \[.net.anchors"):
        load_trainable(model, {n: v for n, v in state.items() if n != k}, "snap.safetensors (snapshot 3)")
    with pytest.raises(ValueError, match=f"snap.safetensors: {k} has shape"):
        load_trainable(model, dict(state, **{k: torch.zeros(1, 1, 1)}), "snap.safetensors")


def test_lazy_task_split_gives_the_fixed_batch_of_the_decoded_one(tmp_path):
    """ls_init, select_esta and grad_interference open their split lazily (decoding only the batch);
    the batch is the one the decoded split gives."""
    from fixtures import write_vtab_fixture
    from torch.utils.data import TensorDataset

    from esta.vit.build import open_task, write_manifest

    (folder,) = write_vtab_fixture(tmp_path / "data", names=("dtd",), n=(12, 4, 4))
    manifest = write_manifest(tmp_path / "manifest.json", folder, "vtab/dtd")
    eager = open_task(manifest, "train800", 16, augment=False)
    lazy = open_task(manifest, "train800", 16, augment=False, lazy=True)
    assert isinstance(eager, TensorDataset) and not isinstance(lazy, TensorDataset)
    for a, b in zip(fixed_batch(eager, 5, seed=2), fixed_batch(lazy, 5, seed=2), strict=True):
        assert torch.equal(a, b)
