"""One-stage vs three-stage PST (ESTA §1 and §3.2: adapting and stitching at once vs "adapt the anchors
first, then stitch"; spec §5, issue "three-stage ablation").

``esta.stages: one`` is ESTA: PST over every stitch from the pretrained anchors. ``three`` runs the
order ESTA argues against, with the same PEFT and recipe: (1) PST adapts each anchor alone on the task
(a one-anchor ``StitchedViT``); (2) the stitching layers are least-squares-initialised on the *adapted*
anchors; (3) PST over every stitch starts from the adapted PEFT modules, heads and biases, and deploys
from importance exactly as ``one`` does.

A stage-1 state holds the trainable tensors of a one-anchor model: names under ``net.anchors.0.``
(shared PEFT, head weight, and shared biases without stitch biases) and, with stitch-specific biases,
``biases.0.`` (the anchor's own biases). ``start_from_adapted`` maps anchor 0 of state ``a`` onto
anchor ``a`` of the full model: every stitch's biases on anchor ``a``'s modules start from that
anchor's adapted biases; the stitching layers' biases keep their LS init.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from esta.vit.tuning import TunableViT

__all__ = ["STAGES", "start_from_adapted", "adapted_anchor_biases", "stitch_layer_weights"]

STAGES = ("one", "three")
_SEP = ":"  # esta.vit.tuning's key separator in the stitch-bias ParameterDicts


def _anchor_part(state: dict[str, torch.Tensor], source: str) -> tuple[dict, dict]:
    """(shared tensors under anchors.0, own biases) of one stage-1 state, keys relative to the anchor."""
    shared, own = {}, {}
    for k, v in state.items():
        if k.startswith("net.anchors.0."):
            shared[k.removeprefix("net.anchors.0.")] = v
        elif k.startswith("biases.0."):
            own[k.removeprefix("biases.0.").replace(_SEP, ".").removeprefix("anchors.0.")] = v
        else:
            raise ValueError(f"{source}: {k!r} is not a tensor of a one-anchor PST model")
    return shared, own


@torch.no_grad()
def start_from_adapted(model: TunableViT, states: list[dict[str, torch.Tensor]], sources: list[str]) -> int:
    """Copy anchors adapted alone (``states[a]`` for anchor a, read from ``sources[a]``) into the PST
    model over every stitch; returns how many tensors were copied. Every tensor of every state must
    land somewhere, or the error names the file: a state of other settings is not silently dropped."""
    if len(states) != len(model.net.anchors):
        raise ValueError(f"{len(states)} adapted anchors for a family of {len(model.net.anchors)}")
    trainable = model.trainable()
    copied = 0
    for a, (state, source) in enumerate(zip(states, sources)):
        shared, own = _anchor_part(state, source)
        for rel, v in shared.items():
            name = f"net.anchors.{a}.{rel}"
            if name not in trainable or trainable[name].shape != v.shape:
                raise ValueError(f"{source}: {rel!r} does not fit anchor {a} of the model (other PEFT settings?)")
            trainable[name].copy_(v)
            copied += 1
        if model.biases is None:
            if own:
                raise ValueError(f"{source} has stitch-specific biases; this model shares its biases")
            continue
        used = set()
        for s in model.table:
            for key, p in model.biases[str(s.stitch_id)].items():
                name = key.replace(_SEP, ".")
                if not name.startswith(f"anchors.{a}."):
                    continue
                rel = name.removeprefix(f"anchors.{a}.")
                if rel not in own:
                    raise ValueError(f"{source} has no adapted bias {rel!r} of anchor {a}")
                p.copy_(own[rel])
                used.add(rel)
                copied += 1
        if set(own) - used:
            raise ValueError(f"{source}: biases {sorted(set(own) - used)[:3]} fit no stitch of the model")
    return copied


@contextmanager
def adapted_anchor_biases(model: TunableViT):
    """Inside, every anchor's module biases are its own stitch's (the adapted anchor's): the net then
    computes the adapted anchors' features block by block (what LS init reads). Restored on exit."""
    if model.biases is None:
        yield model.net
        return
    params = dict(model.net.named_parameters())
    saved = {}
    with torch.no_grad():
        for s in model.table:
            if s.is_anchor:
                for name, p in model.biases_for(s.stitch_id).items():
                    saved[name] = params[name].detach().clone()
                    params[name].copy_(p)
    try:
        yield model.net
    finally:
        with torch.no_grad():
            for name, v in saved.items():
                params[name].copy_(v)


def stitch_layer_weights(model: TunableViT) -> dict[str, torch.Tensor]:
    """The stitching layers' own weight and bias (PEFT-wrapped or not), keyed as in a plain
    ``StitchedViT.stitch_layers.state_dict()`` (the ``stitch_init`` file)."""
    out = {}
    for p, layers in enumerate(model.net.stitch_layers):
        for i, layer in enumerate(layers):
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
            out[f"{p}.{i}.weight"], out[f"{p}.{i}.bias"] = base.weight, base.bias
    return out
