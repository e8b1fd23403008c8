"""Export one deployed stitch as a standalone model (ESTA §3.3; spec §6 "Export").

The shared LoRA is merged into a *copy* of the weights (peft's ``merge`` changes the base weight in
place, which would change every other stitch), the stitch's own biases are baked into that copy, and
only the modules on the stitch's path are kept: front stem and blocks ``0..j``, stitching layer,
end blocks ``k..D-1``, final norm and head. Weights go to safetensors, the architecture and
provenance to a JSON beside them; ``load_stitch`` rebuilds the model with timm and loads the weights.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from esta.vit.tuning import TunableViT
from esta.vit.stitch import StitchedViT, embed, head

__all__ = ["StitchPath", "export_stitch", "load_stitch", "merged_net"]


class StitchPath(nn.Module):
    """A standalone stitch: front stem + blocks 0..j -> stitching layer -> end blocks k.. + head.
    An anchor is kept as its plain timm model."""

    def __init__(self, front: nn.Module, layer: nn.Module, end: nn.Module, j: int, k: int):
        super().__init__()
        front.blocks = front.blocks[: j + 1]
        front.norm, front.fc_norm, front.head = nn.Identity(), nn.Identity(), nn.Identity()
        end.blocks = end.blocks[k:]
        end.patch_embed, end.norm_pre = nn.Identity(), nn.Identity()
        end.cls_token = end.pos_embed = end.reg_token = None
        self.front, self.layer, self.end = front, layer, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.front.blocks(embed(self.front, x))
        return head(self.end, self.end.blocks(self.layer(h)))


def merged_net(model: TunableViT, stitch_id: int) -> StitchedViT:
    """A copy of the net with stitch ``stitch_id``'s biases baked in and every LoRA merged away."""
    net = copy.deepcopy(model.net)
    if model.biases is not None:
        params = dict(net.named_parameters())
        with torch.no_grad():
            for name, p in model.biases_for(stitch_id).items():
                params[name].copy_(p)
    if model.cfg.mode == "full":
        return net  # SN-Net: no LoRA to merge
    from peft.tuners.lora import LoraLayer  # imported lazily, see esta.vit.tuning

    for name, module in list(net.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(net.get_submodule(parent), child, module.get_base_layer())
    return net


def _build(arch: dict) -> nn.Module:
    anchors = [
        timm.create_model(a["timm_name"], pretrained=False, num_classes=arch["num_classes"], **a["kwargs"])
        for a in arch["anchors"]
    ]
    if arch["is_anchor"]:
        return anchors[0]
    front, end = anchors
    layer = nn.Linear(front.embed_dim, end.embed_dim)
    return StitchPath(front, layer, end, arch["j"], arch["k"])


def export_stitch(
    model: TunableViT,
    stitch_id: int,
    out_dir: str | Path,
    anchor_arch: list[dict],
    provenance: dict | None = None,
) -> Path:
    """Write ``stitch_<id>.safetensors`` and ``stitch_<id>.json`` under ``out_dir``; returns the JSON.

    ``anchor_arch[i]`` is ``{"timm_name", "kwargs"}`` of anchor i (from ``esta.vit.anchors``).
    """
    s = model.net.stitch(stitch_id)
    net = merged_net(model, stitch_id)
    num_classes = net.anchors[s.end].num_classes
    arch = dict(
        stitch_id=stitch_id,
        is_anchor=s.is_anchor,
        front=s.front,
        end=s.end,
        j=s.j,
        k=s.k,
        num_classes=num_classes,
        anchors=[anchor_arch[s.front]] if s.is_anchor else [anchor_arch[s.front], anchor_arch[s.end]],
    )
    if s.is_anchor:
        standalone = net.anchors[s.front]
    else:
        standalone = StitchPath(net.anchors[s.front], net.stitch_layer(s), net.anchors[s.end], s.j, s.k)
    state = {k: v.detach().cpu().contiguous() for k, v in standalone.state_dict().items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"stitch_{stitch_id:03d}"
    meta = dict(arch=arch, provenance=provenance or {}, n_params=sum(v.numel() for v in state.values()))
    # Weights first, JSON last and both atomically: a JSON only exists beside complete weights.
    tmp = stem.with_suffix(f".safetensors.tmp-{os.getpid()}")
    save_file(state, str(tmp), metadata={"arch": json.dumps(arch)})
    os.replace(tmp, stem.with_suffix(".safetensors"))
    tmp = stem.with_suffix(f".json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, stem.with_suffix(".json"))
    return stem.with_suffix(".json")


def load_stitch(path: str | Path) -> nn.Module:
    """Rebuild an exported stitch from its JSON (or safetensors) path, in eval mode."""
    stem = Path(path).with_suffix("")
    meta_path, weights = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    for p in (meta_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"exported stitch file missing: {p}")
    meta = json.loads(meta_path.read_text())
    model = _build(meta["arch"])
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval()
