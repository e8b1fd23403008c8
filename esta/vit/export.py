"""Export one deployed stitch as a standalone model (ESTA §3.3; spec §6 "Export").

Only the modules on the stitch's path are copied -- front stem (patch embed, cls/pos) and blocks
``0..j``, stitching layer, end blocks ``k..D-1``, final norm and head; nothing else of the shared
model is read (a deep copy of the whole net would cost ~0.5 GB per exported stitch at ViT-B). The
shared LoRA, DoRA or IA³ is merged into those copies (peft's ``merge`` changes the base weight in place,
which on the shared model would change every other stitch) and the stitch's own biases are baked in.
Bottleneck adapters (``esta.vit.adapters``) cannot be merged: the copies keep them, and the JSON
says how to rebuild them.
Weights go to safetensors, the architecture and provenance to a JSON beside them; ``load_stitch``
rebuilds the model with timm and loads the weights.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from esta.vit.seg import SegHead, make_segmenter, seg_arch
from esta.vit.tuning import TunableViT
from esta.vit.stitch import embed, head

__all__ = ["StitchPath", "export_stitch", "load_stitch", "merged_path"]


class StitchPath(nn.Module):
    """A standalone stitch: front stem + blocks 0..j -> stitching layer -> end blocks k.. + head.
    An anchor is kept as its plain timm model."""

    def __init__(self, front: nn.Module, layer: nn.Module, end: nn.Module, j: int, k: int):
        super().__init__()
        # nn.Sequential keeps the anchor's block names (end.blocks.<k>...) and so the parameter names;
        # an EVA model's ModuleList would renumber its slice from 0
        front.blocks = nn.Sequential(OrderedDict(list(front.blocks.named_children())[: j + 1]))
        end.blocks = nn.Sequential(OrderedDict(list(end.blocks.named_children())[k:]))
        front.norm, front.fc_norm, front.head = nn.Identity(), nn.Identity(), nn.Identity()
        end.patch_embed, end.norm_pre = nn.Identity(), nn.Identity()
        end.cls_token = end.pos_embed = end.reg_token = None
        self.front, self.layer, self.end = front, layer, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.front.blocks(embed(self.front, x))
        return head(self.end, self.end.blocks(self.layer(h)))


def _copy_without(module: nn.Module, drop: list[nn.Module | nn.Parameter | None]) -> nn.Module:
    """A deep copy of ``module`` that never copies the submodules and parameters in ``drop``: in the
    copy a dropped module is an ``nn.Identity`` and a dropped parameter is ``None``."""
    memo = {id(d): None if isinstance(d, torch.Tensor) else nn.Identity() for d in drop if d is not None}
    return copy.deepcopy(module, memo)


def merged_path(model: TunableViT, stitch_id: int) -> nn.Module:
    """Stitch ``stitch_id`` as a standalone model, built from copies of its path's modules only,
    with its own biases baked in and every LoRA merged away; ``model`` is left as it was.

    An anchor is a copy of its timm model; a stitch is a ``StitchPath``."""
    net = model.net
    s = net.stitch(stitch_id)
    if s.is_anchor:
        standalone = copy.deepcopy(net.anchors[s.front])
        prefixes = {f"anchors.{s.front}.": ""}
    else:
        front, end = net.anchors[s.front], net.anchors[s.end]
        front = _copy_without(front, [*front.blocks[s.j + 1 :], front.norm, front.fc_norm, front.head])
        end = _copy_without(
            end, [*end.blocks[: s.k], end.patch_embed, end.norm_pre, end.cls_token, end.reg_token, end.pos_embed]
        )
        standalone = StitchPath(front, copy.deepcopy(net.stitch_layer(s)), end, s.j, s.k)
        prefixes = {
            f"anchors.{s.front}.": "front.",
            f"anchors.{s.end}.": "end.",
            f"stitch_layers.{s.front}.{s.layer}.": "layer.",
        }
    if model.biases is not None:
        params = dict(standalone.named_parameters())
        with torch.no_grad():
            for name, p in model.biases_for(stitch_id).items():
                old = next(o for o in prefixes if name.startswith(o))
                key = prefixes[old] + name.removeprefix(old)
                if key not in params:  # a model readied for_inference has its LoRA merged and unwrapped
                    key = key.replace(".base_layer.", ".")
                params[key].copy_(p)
    if model.cfg.mode == "full":
        return standalone  # SN-Net: no PEFT to merge
    from peft.tuners.tuners_utils import BaseTunerLayer  # imported lazily, see esta.vit.tuning

    # LoRA, DoRA and IA³ (peft layers) merge into their base linear; bottleneck adapters stay.
    for name, module in list(standalone.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
            parent, _, child = name.rpartition(".")
            setattr(standalone.get_submodule(parent), child, module.get_base_layer())
    return standalone


def _kept_adapters(model: TunableViT) -> dict | None:
    """The bottleneck adapters an exported stitch keeps (how ``load_stitch`` rebuilds them), or None."""
    cfg = model.cfg
    if cfg.mode == "full" or cfg.peft not in ("adapter", "adaptformer"):
        return None
    if cfg.peft == "adapter":
        return dict(kind="adapter", bottleneck=cfg.adapter_bottleneck, scale=1.0)
    return dict(kind="adaptformer", bottleneck=cfg.adaptformer_bottleneck, scale=cfg.adaptformer_scale)


def _build(arch: dict) -> nn.Module:
    anchors = [
        timm.create_model(a["timm_name"], pretrained=False, num_classes=arch["num_classes"], **a["kwargs"])
        for a in arch["anchors"]
    ]
    if arch.get("seg"):  # a segmentation stitch (esta.vit.seg): its end anchor carries a SETR head
        anchors[-1] = make_segmenter(anchors[-1], arch["seg"]["num_classes"], arch["seg"]["hidden"])
    if arch["is_anchor"]:
        model = anchors[0]
    else:
        front, end = anchors
        model = StitchPath(front, nn.Linear(front.embed_dim, end.embed_dim), end, arch["j"], arch["k"])
    if arch.get("adapters"):
        from esta.vit.adapters import inject_bottleneck

        a = arch["adapters"]
        inject_bottleneck(model, a["kind"], a["bottleneck"], a["scale"])
    return model


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
    standalone = merged_path(model, stitch_id)
    num_classes = model.net.anchors[s.end].num_classes
    arch = dict(
        stitch_id=stitch_id,
        is_anchor=s.is_anchor,
        front=s.front,
        end=s.end,
        j=s.j,
        k=s.k,
        num_classes=num_classes,
        anchors=[anchor_arch[s.front]] if s.is_anchor else [anchor_arch[s.front], anchor_arch[s.end]],
        adapters=_kept_adapters(model),
        seg=seg_arch(model.net.anchors[s.end]) if isinstance(model.net.anchors[s.end].head, SegHead) else None,
    )
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
