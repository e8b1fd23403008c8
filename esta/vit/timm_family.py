"""Anchor families from timm model names (spec §13 "a timm family").

``family: timm`` with ``anchors: {source: files, timm: [...], weights: [...]}`` stitches any family of
plain ViT-style timm models of increasing width. Each entry of ``anchors.timm`` is a timm model name
(``deit_small_patch16_224``, ``vit_base_patch16_224.augreg_in21k``) or a mapping
``{name: <timm name>, kwargs: {<create_model keyword arguments>}, label: <short name>}``;
:func:`timm_specs` turns them into the ``AnchorSpec`` rows every other part of ``esta.vit`` reads (a
family is a name of ``esta.vit.anchors.FAMILIES`` or such a tuple of specs).

A family is *stitchable* (:func:`refusal`, :func:`check_timm_family`) when every model is a plain ViT --
timm's ``VisionTransformer`` (DeiT, DeiT III, the augreg ViTs and other subclasses that keep its block
interface ``block(tokens) -> tokens``) or an EVA model without rotary embeddings (EVA-01 style), with a
plain ``PatchEmbed`` stem -- and all share patch size, image size and the number of prefix tokens. Equal
depths are stitched by SN-Net's paired rule, any other depths by the depth rule
(``esta.stitches.default_rule``). Refused, naming the model and the reason: hierarchical or convolutional
models (Swin, ConvNeXt, ResNet), convolutional (hybrid) stems, distilled models (a distillation token and
head), attention-pool heads, EVA-02 models (rotary embeddings passed to every block), and families that
differ in patch size, image size or prefix tokens. The check builds the models on the meta device, so it runs before any
job in milliseconds.

Weight files (``register_weights``) may hold any head size: :func:`stored_classes` reads it from the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

from esta.vit.anchors import AnchorSpec, build_anchor, check_family, family_at

if TYPE_CHECKING:
    from torch import nn

__all__ = ["timm_specs", "refusal", "check_timm_family", "config_family", "stored_classes", "family_label"]


def timm_specs(entries: list) -> tuple[AnchorSpec, ...]:
    """``AnchorSpec`` rows of config ``anchors.timm`` (small to large). An unknown timm name fails
    naming the entry; the pretrained head size is timm's pretrained cfg's (registration reads the
    file's own)."""
    import timm
    from timm.models import get_pretrained_cfg

    if not entries:
        raise ValueError("family timm needs anchors.timm: a list of timm model names, small to large")
    specs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, kwargs, label = entry, {}, entry
        elif isinstance(entry, dict) and isinstance(entry.get("name"), str):
            unknown = set(entry) - {"name", "kwargs", "label"}
            if unknown:
                raise ValueError(f"anchors.timm[{i}]: unknown keys {sorted(unknown)}; expected name, kwargs, label")
            name, kwargs, label = entry["name"], dict(entry.get("kwargs") or {}), entry.get("label", entry["name"])
        else:
            raise ValueError(f"anchors.timm[{i}] = {entry!r}: expected a timm model name or "
                             "{name: <timm name>, kwargs: {...}, label: <short name>}")
        if not timm.is_model(name):
            raise ValueError(f"anchors.timm[{i}]: {name!r} is not a timm model name; "
                             f"list candidates with timm.list_models('*{name.split('.')[0].split('_')[0]}*')")
        cfg = get_pretrained_cfg(name)
        classes = cfg.num_classes if cfg is not None and cfg.num_classes else 1000
        specs.append(AnchorSpec(label, name, kwargs, classes))
    labels = [s.name for s in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"anchors.timm: the anchors' labels {labels} repeat; give each entry its own label")
    return tuple(specs)


def family_label(specs) -> str:
    """A family's name for messages and tables: its FAMILIES name, or ``timm(a, b, c)``."""
    return specs if isinstance(specs, str) else f"timm({', '.join(s.name for s in specs)})"


def refusal(model: nn.Module) -> str | None:
    """Why ``model`` cannot be an anchor (None when it is a plain ViT that can be stitched)."""
    from timm.layers import PatchEmbed
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    kind = type(model).__name__
    if isinstance(model, Eva):
        if model.rope is not None:
            return ("it passes rotary position embeddings (RoPE) to every block (EVA-02 style), so its blocks "
                    "do not keep the plain ViT interface block(tokens)")
    elif not isinstance(model, VisionTransformer):
        return (f"{kind} is not a plain ViT (timm's VisionTransformer): hierarchical or convolutional models "
                "have no sequence of tokens of one width from block to block to stitch")
    if not isinstance(model.patch_embed, PatchEmbed):
        return f"its stem is a {type(model.patch_embed).__name__}, not a plain PatchEmbed (a convolutional stem)"
    if getattr(model, "dist_token", None) is not None or getattr(model, "head_dist", None) is not None:
        return ("it is a distilled model (an extra distillation token and head); use the non-distilled "
                "variant")
    if getattr(model, "attn_pool", None) is not None:
        return "its head pools by attention (global_pool='map'), whose cost is not linear in the class count"
    if len(model.blocks) < 2:
        return f"it has {len(model.blocks)} block(s); stitching needs at least 2"
    return None


def check_timm_family(specs: tuple[AnchorSpec, ...], img_size: int | None = None) -> None:
    """Refuse a family that cannot be stitched, naming the model and the reason: each model must be a
    plain ViT (:func:`refusal`); as timm builds them, the models must share patch size, image size and
    prefix tokens and increase in width (``esta.vit.anchors.check_family``), and so at ``img_size``
    (the workflow's ``data.img_size``) when given. Models are built on the meta device (no weights, no
    memory)."""
    import torch

    names = [s.name for s in specs]
    with torch.device("meta"):
        native = []
        for spec in specs:
            try:
                model = build_anchor(spec, 1)
            except (TypeError, ValueError, RuntimeError) as err:  # create_model's errors for bad kwargs
                raise ValueError(f"timm anchor {spec.name} ({spec.timm_name}, kwargs {spec.kwargs}) cannot be "
                                 f"built: {err}") from err
            why = refusal(model)
            if why:
                raise ValueError(f"timm anchor {spec.name} ({spec.timm_name}) cannot be stitched: {why}")
            native.append(model)
        check_family(native, names)
        if img_size is not None:
            check_family([build_anchor(s, 1) for s in family_at(specs, img_size)], names)


def config_family(name: str, timm: list | None, img_size: int) -> str | tuple[AnchorSpec, ...]:
    """The family config keys ``family`` and ``anchors.timm`` describe: the name itself, or for
    ``family: timm`` the checked rows of ``anchors.timm`` (:func:`check_timm_family` at ``img_size``)."""
    if name != "timm":
        return name
    specs = timm_specs(timm or [])
    check_timm_family(specs, img_size)
    return specs


def stored_classes(path: str | Path) -> int:
    """Rows of the classification head stored in a timm weight file (0 when it has none): safetensors
    and ``.pth``/``.bin`` through timm's ``load_state_dict`` (``weights_only``; a ``model`` /
    ``state_dict`` entry is unwrapped), Google's ``.npz`` by its ``head/kernel``."""
    import numpy as np
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path) as w:
            return int(w["head/kernel"].shape[-1]) if "head/kernel" in w.files else 0
    try:
        state = load_state_dict(str(path), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"refused to unpickle weight file {path}: it is not a plain state dict of tensors "
                         f"(loaded with weights_only=True; convert it to .safetensors): {err}") from err
    head = state.get("head.weight")
    return 0 if head is None else int(head.shape[0])
