"""Export copies only the stitch's path (spec §3, §6): the exported model has exactly the stitch's
path parameters, export never reads a parameter off the path (no deep copy of the whole net), and
the shared model is unchanged afterwards (LoRA unmerged, every tensor as before)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_anchors, make_images, tiny_arch, trained_like
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from esta.vit.export import export_stitch, load_stitch
from esta.vit.stitch import stitch_costs

SIDS = (0, 2, 3, 8, 17, 22)  # anchors Ti and B; Ti->S at k = 0 and mid-depth; S->B; the last stitch


class StorageReads(TorchDispatchMode):
    """Storages of every tensor any op reads while the mode is on (a deep copy clones each one)."""

    def __init__(self):
        super().__init__()
        self.read: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_leaves((args, kwargs or {})):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.read.add(t.untyped_storage().data_ptr())
        return func(*args, **(kwargs or {}))


def off_path_storages(model, sid: int) -> dict[int, str]:
    """Every parameter the stitch does not run through: other blocks, LoRA and stitching layers, and
    the other stitches' own biases."""
    own = {id(p) for p in model.biases_for(sid).values()} if model.biases is not None else set()
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("biases."):
            off = id(p) not in own
        else:
            off = not model.net.on_path(name.removeprefix("net."), sid)
        if off:
            out[p.untyped_storage().data_ptr()] = name
    return out


@pytest.mark.parametrize("mode", ["pst", "full"])
def test_export_reads_and_keeps_only_the_path(mode, tmp_path):
    model = trained_like(mode, seed=5).eval()
    path_params = stitch_costs(make_anchors())["params"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = make_images(3, seed=21)
    with torch.no_grad():
        want = {sid: model(x, sid) for sid in SIDS}
    for sid in SIDS:
        reads = StorageReads()
        with reads:
            meta_path = export_stitch(model, sid, tmp_path, tiny_arch())
        touched = sorted(name for ptr, name in off_path_storages(model, sid).items() if ptr in reads.read)
        assert not touched, f"stitch {sid}: export read off-path parameters {touched[:5]}"

        meta = json.loads(meta_path.read_text())
        standalone = load_stitch(meta_path)
        assert meta["n_params"] == path_params[sid] == sum(p.numel() for p in standalone.parameters()), sid
        with torch.no_grad():
            assert (standalone(x) - want[sid]).abs().max().item() <= 1e-5, sid

    after = model.state_dict()
    assert after.keys() == before.keys()  # no LoRA merged away, no module replaced
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    if mode == "pst":
        assert not any(getattr(m, "merged", False) for m in model.modules())
