"""Anchor families: pretrained ViTs of increasing width (ESTA §3, spec §1, §8, §13).

A family is a row of data, as in nanoGPT's model table: each anchor is a timm model name plus the
``create_model`` keyword arguments that shape it. timm builds every ViT, the paper's ViT-Ti/S/B as
well as the tiny family of the embedded default; there is no second ViT implementation here. A family
is named by its key in ``FAMILIES`` or given as its tuple of ``AnchorSpec`` rows: a user's family of
timm names (``family: timm``, ``esta.vit.timm_family``). Anchors may differ in depth (spec §13).

Weights come only from local files (``create_model(..., pretrained=True,
pretrained_cfg_overlay=dict(file=path, num_classes=<classes in the file>))``); with no file the
anchor is randomly initialised. Nothing is ever downloaded. A file's classification head is kept only
for the task it was trained on (SN-Net's adapted anchors, spec §7); an upstream head is re-initialised
for the task even when the class counts agree.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

from typing import TYPE_CHECKING

from safetensors import safe_open

if TYPE_CHECKING:  # timm and torch are imported where models are built: the workflow reads the
    from torch import nn  # family table when it plans the DAG, and that must stay fast

__all__ = ["AnchorSpec", "FAMILIES", "family", "family_at", "build_anchor", "build_family", "check_family",
           "weights_meta"]


@dataclass(frozen=True)
class AnchorSpec:
    """One anchor: a timm model name, the kwargs that shape it, and its pretraining head size."""

    name: str  # short name used in tables, e.g. "ViT-Ti"
    timm_name: str
    kwargs: dict = field(default_factory=dict)
    # Classes of the head stored in the pretrained file (IN-21K for augreg_in21k); used to load it.
    pretrained_classes: int = 1000


_IN21K = 21843

FAMILIES: dict[str, tuple[AnchorSpec, ...]] = {
    # The paper's family (spec §8). The `.augreg_in21k` tag matters: the untagged name resolves to
    # an IN-1K fine-tuned pretrained cfg.
    "vit-ti-s-b": (
        AnchorSpec("ViT-Ti", "vit_tiny_patch16_224.augreg_in21k", {}, _IN21K),
        AnchorSpec("ViT-S", "vit_small_patch16_224.augreg_in21k", {}, _IN21K),
        AnchorSpec("ViT-B", "vit_base_patch16_224.augreg_in21k", {}, _IN21K),
    ),
    "deit-ti-s-b": (
        AnchorSpec("DeiT-Ti", "deit_tiny_patch16_224.fb_in1k", {}, 1000),
        AnchorSpec("DeiT-S", "deit_small_patch16_224.fb_in1k", {}, 1000),
        AnchorSpec("DeiT-B", "deit_base_patch16_224.fb_in1k", {}, 1000),
    ),
    # The embedded default: 32 px, patch 8 (16 tokens + cls), depth 6, head dim 16 with the paper's
    # head counts 3/6/12, so widths 48/96/192 mirror Ti/S/B at ~1/4 width.
    "embedded": tuple(
        AnchorSpec(
            name,
            "vit_tiny_patch16_224",
            dict(img_size=32, patch_size=8, embed_dim=16 * heads, depth=6, num_heads=heads),
            100,
        )
        for name, heads in (("Ti-32", 3), ("S-32", 6), ("B-32", 12))
    ),
}


def family(name: str | tuple[AnchorSpec, ...]) -> tuple[AnchorSpec, ...]:
    """The anchor specs of a family, small to large; an unknown name lists the known ones. A tuple
    of specs (a timm family, ``esta.vit.timm_family.timm_specs``) is its own family.

    ``"<family>@<px>"`` is the family at another input resolution (timm resamples the position
    embedding of pretrained weights on load), e.g. ``vit-ti-s-b@32`` for CPU-sized tests.
    """
    if isinstance(name, tuple):
        if not name or not all(isinstance(s, AnchorSpec) for s in name):
            raise ValueError(f"a family given by its rows must be a non-empty tuple of AnchorSpec, got {name!r}")
        return name
    base, _, px = name.partition("@")
    if base not in FAMILIES:
        raise ValueError(f"unknown anchor family {base!r}; known families: {sorted(FAMILIES)}")
    specs = FAMILIES[base]
    if px:
        if not px.isdigit() or int(px) < 8:
            raise ValueError(f"bad resolution in family name {name!r}; expected '<family>@<pixels>'")
        specs = tuple(replace(s, kwargs=dict(s.kwargs, img_size=int(px))) for s in specs)
    return specs


def family_at(name: str | tuple[AnchorSpec, ...], img_size: int) -> str | tuple[AnchorSpec, ...]:
    """The family that builds ``name``'s anchors at ``img_size`` pixels (``name`` when native); for a
    family given by its rows, the rows with ``img_size`` set."""
    if isinstance(name, tuple):
        return tuple(replace(s, kwargs=dict(s.kwargs, img_size=img_size)) for s in family(name))
    native = {s.kwargs.get("img_size", 224) for s in family(name)}
    return name if native == {img_size} else f"{name.partition('@')[0]}@{img_size}"


def weights_meta(path: str | Path) -> dict:
    """The ``esta`` metadata of a weight file this workflow wrote (``{}`` for any other file)."""
    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return {}  # a missing file is reported by build_anchor, naming it
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("esta", "{}"))


def build_anchor(
    spec: AnchorSpec, num_classes: int, weights: str | Path | None = None, keep_head: bool = False
) -> nn.Module:
    """Build one anchor with a ``num_classes`` head, loading a local weight file if given.

    The head is new (timm's initialisation) unless ``keep_head``: then the file's head is loaded
    and must have ``num_classes`` outputs. The head size stored in the file is read from the
    ``num_classes`` metadata of files this workflow wrote, else taken from ``spec``.
    """
    import timm
    from timm.models.vision_transformer import init_weights_vit_timm

    if num_classes < 1 and not (keep_head and num_classes == 0):  # 0: a file stored without a head
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs = dict(spec.kwargs, num_classes=num_classes)
    if weights is None:
        return _block_interface(timm.create_model(spec.timm_name, pretrained=False, **kwargs))
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"weight file for {spec.name} not found: {path} (expected a timm state dict in "
            f".safetensors, .pth or .npz format for {spec.timm_name})"
        )
    stored = weights_meta(path).get("num_classes", spec.pretrained_classes)
    # timm drops the file's head when the model's class count differs from the overlay's
    overlay = dict(file=str(path), num_classes=num_classes if keep_head else stored)
    if path.suffix == ".npz":  # Google's original JAX checkpoints: timm's own npz loader
        overlay["custom_load"] = True
    try:
        anchor = timm.create_model(
            spec.timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
        )
    except (pickle.UnpicklingError, RuntimeError) as err:
        if isinstance(err, pickle.UnpicklingError) or "weights_only" in str(err):
            # torch.load(weights_only=True) met more than tensors: never run a pickle's code
            raise ValueError(
                f"refused to unpickle weight file {path}: it is not a plain state dict of tensors "
                f"(loaded with weights_only=True; convert it to .safetensors): {err}"
            ) from err
        # timm's load_state_dict reports missing keys and size mismatches as RuntimeError
        raise ValueError(
            f"weight file {path} does not fit {spec.name} ({spec.timm_name}, {spec.kwargs}"
            f"{', keeping its head' if keep_head else ''}): {err}"
        ) from err
    if not keep_head and stored == num_classes:
        init_weights_vit_timm(anchor.head)  # timm loaded the equally sized head: make it new
    return _block_interface(anchor)


def _block_interface(vit: nn.Module) -> nn.Module:
    """EVA's attention adds its q/v biases inside ``F.linear(x, qkv.weight, bias)``, which would bypass
    a LoRA wrapped around ``qkv``; with ``qkv_bias_separate`` it calls ``qkv(x)`` and adds them after
    (the same function), so PEFT on ``attn.qkv`` acts on EVA blocks as on ViT blocks."""
    for m in vit.modules():
        if hasattr(m, "qkv_bias_separate"):
            m.qkv_bias_separate = True
    return vit


def check_family(anchors: list[nn.Module], names: list[str] | None = None) -> None:
    """Anchors of one family must share patch size, image size and prefix tokens (so their token
    sequences line up), have at least 2 blocks each, and be ordered by strictly increasing width;
    depths may differ. An error names the anchors that disagree."""
    if not anchors:
        raise ValueError("an anchor family needs at least one anchor")
    names = names or [f"anchor {i}" for i in range(len(anchors))]
    shapes = {
        "patch size": [tuple(a.patch_embed.patch_size) for a in anchors],
        "image size": [tuple(a.patch_embed.img_size) for a in anchors],
        "prefix tokens": [a.num_prefix_tokens for a in anchors],
        "tokens": [a.patch_embed.num_patches + a.num_prefix_tokens for a in anchors],
    }
    for what, values in shapes.items():
        for i, v in enumerate(values[1:], 1):
            if v != values[0]:
                raise ValueError(f"anchors {names[0]} and {names[i]} cannot be stitched: different {what}, "
                                 f"{values[0]} vs {v} (every anchor of a family needs the same {what})")
    for n, a in zip(names, anchors):
        if len(a.blocks) < 2:
            raise ValueError(f"anchor {n} has {len(a.blocks)} block(s); stitching needs at least 2")
    widths = [a.embed_dim for a in anchors]
    if any(b <= a for a, b in zip(widths, widths[1:])):
        raise ValueError(f"anchors must be ordered by strictly increasing width, got widths {widths} "
                         f"for {', '.join(names)}")


def build_family(
    name: str | tuple[AnchorSpec, ...],
    num_classes: int,
    weights: list[str | Path | None] | None = None,
    task: str | None = None,
) -> list[nn.Module]:
    """Build every anchor of a family (small to large), each with a ``num_classes`` head.

    A weight file's head is kept only when its metadata says it was trained on ``task`` (SN-Net's
    adapted anchors, written by ``train_anchor.py``); upstream heads (task "upstream", registered
    files without a task) are re-initialised, even for a task of as many classes.
    """
    specs = family(name)
    weights = [None] * len(specs) if weights is None else list(weights)
    if len(weights) != len(specs):
        raise ValueError(
            f"family {[s.name for s in specs]} has {len(specs)} anchors but {len(weights)} weight files were given"
        )
    keep = [w is not None and task is not None and weights_meta(w).get("task") == task for w in weights]
    anchors = [build_anchor(s, num_classes, w, k) for s, w, k in zip(specs, weights, keep)]
    check_family(anchors, [s.name for s in specs])
    return anchors


def meta_family(name: str | tuple[AnchorSpec, ...], num_classes: int) -> list[nn.Module]:
    """The family on the meta device: shapes only, for FLOPs and parameter counts in milliseconds."""
    import torch

    with torch.device("meta"):
        return build_family(name, num_classes)
