"""Stitched LLaMA: decoder anchors of different width *and depth* joined by linear stitching layers
(spec §11; the ViT counterpart is ``esta.vit.stitch``).

A stitch runs the front anchor's ``embed_tokens`` and decoder layers ``0..j``, a stitching linear
``d_f -> d_e``, the end anchor's layers ``k..L_e-1``, its final norm and its ``lm_head``. The stitch
table is the method core's (``esta.stitches``): the depth-preserving rule ``k = round((j+1)·L_e/L_f)``
by default (32 -> 40 layers: 31 stitches, one stitching layer each), SN-Net's paired window rule
(shared stitching layers) for anchors of equal depth with ``llm.rule: paired``.

Precision policy (spec §11): the frozen anchors stay in the configured dtype (bf16 at paper scale);
every trainable or fitted tensor -- the stitching layers here, LoRA and stitch biases in
``esta.llm.tuning`` -- is fp32, the master weight. The forward runs in the anchors' dtype and casts
explicitly where the two meet (into and out of the stitching layer; a stitch bias is cast to the
linear it joins), so training, evaluation, generation and export work with or without autocast.

The forward goes through the HF modules themselves (transformers 5.x): each anchor applies its own
rotary embedding and its own causal mask from ``create_causal_mask`` (which also masks padding),
left padding gets ``position_ids = cumsum(mask) - 1``, and generation keeps one KV cache per anchor
(attention layers write at their own ``layer_idx``, so one shared cache would collide).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

from esta import stitches
from esta.lstsq import fit_shared_layers

__all__ = ["StitchedLlama", "positions_from_mask", "ls_init", "self_or_base"]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions of left-padded rows: ``cumsum(mask) - 1``, pads set to 1 as HF's generate does."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)


class StitchedLlama(nn.Module):
    """Anchors plus the stitching layers of every neighbouring pair; ``forward(ids, mask, stitch_id)``.

    The stitch is an argument, never stored state. ``overrides`` maps qualified parameter names to
    tensors used in their place for one call (``torch.func.functional_call`` layer by layer); PST
    passes each stitch's own biases this way while training. Without overrides (inference: a palette
    readied by ``TunableLlama.for_inference``, an export) every module is called directly. With ``checkpointing`` each decoder layer is recomputed
    in backward (non-reentrant, so the overrides are applied again on recomputation).
    """

    def __init__(self, anchors: list[nn.Module], rule: str = "depth", checkpointing: bool = False):
        super().__init__()
        self.anchors = nn.ModuleList(anchors)
        self.rule = rule
        self.checkpointing = checkpointing
        self.table = stitches.enumerate_stitches([a.config.num_hidden_layers for a in anchors],
                                                 [a.config.hidden_size for a in anchors], rule)
        widths = [a.config.hidden_size for a in anchors]
        # trainable or LS-fitted: fp32 master weights whatever the anchors' dtype (precision policy)
        self.stitch_layers = nn.ModuleList(
            nn.ModuleList(nn.Linear(widths[p], widths[p + 1], dtype=torch.float32) for _ in range(n))
            for p, n in enumerate(stitches.layer_counts(self.table))
        )

    num_stitches = property(lambda self: len(self.table))

    def stitch(self, stitch_id: int) -> stitches.Stitch:
        """The table row of ``stitch_id``; an unknown id is an error naming the valid range."""
        return stitches.lookup(self.table, stitch_id)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each decoder layer in the backward pass (non-reentrant; overrides reapplied)."""
        self.checkpointing = bool(enable)

    def segments(self, stitch_id: int) -> list[tuple[int, range]]:
        """(anchor, decoder layers) run by a stitch, in order."""
        s = self.stitch(stitch_id)
        if s.is_anchor:
            return [(s.front, range(s.depth))]
        return [(s.front, range(s.j + 1)), (s.end, range(s.k, self.anchors[s.end].config.num_hidden_layers))]

    def path_prefixes(self, stitch_id: int) -> list[str]:
        """Qualified-name prefixes of every module a stitch runs through."""
        s = self.stitch(stitch_id)
        out = [f"anchors.{s.front}.model.embed_tokens."]
        for a, layers in self.segments(stitch_id):
            out += [f"anchors.{a}.model.layers.{i}." for i in layers]
        if not s.is_anchor:
            out.append(f"stitch_layers.{s.front}.{s.layer}.")
        return out + [f"anchors.{s.end}.model.norm.", f"anchors.{s.end}.lm_head."]

    def on_path(self, name: str, stitch_id: int) -> bool:
        """Whether the parameter or module called ``name`` lies on stitch ``stitch_id``'s path."""
        return stitches.on_path(name, self.path_prefixes(stitch_id))

    def new_caches(self) -> list[DynamicCache]:
        """One empty KV cache per anchor."""
        return [DynamicCache(config=a.config) for a in self.anchors]

    def _decode(self, anchor: int, layers: range, h, attention_mask, position_ids, caches, overrides):
        """Run decoder ``layers`` of one anchor with its own rotary embedding and causal mask."""
        model = self.anchors[anchor].model
        cache = None if caches is None else caches[anchor]
        mask = create_causal_mask(config=model.config, inputs_embeds=h, attention_mask=attention_mask,
                                  cache=cache, position_ids=position_ids, layer_idx=layers.start)
        pe = model.rotary_emb(h, position_ids)
        for i in layers:
            prefix = f"anchors.{anchor}.model.layers.{i}."
            mine = {n[len(prefix):]: t for n, t in overrides.items() if n.startswith(prefix)}
            kwargs = dict(attention_mask=mask, position_embeddings=pe, position_ids=position_ids,
                          cache=cache, use_cache=cache is not None)
            layer = model.layers[i]
            if self.checkpointing and torch.is_grad_enabled():
                h = checkpoint(functional_call, layer, mine, (h,), kwargs, use_reentrant=False)
            elif mine:
                h = functional_call(layer, mine, (h,), kwargs)
            else:  # nothing to substitute (inference): functional_call would walk the layer's parameters
                h = layer(h, **kwargs)
        return h

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, stitch_id: int,
                position_ids: torch.Tensor | None = None, caches: list[DynamicCache] | None = None,
                overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (B, T, V) of stitch ``stitch_id``. ``attention_mask`` (B, past + T) is 1 on tokens,
        0 on (left) padding; ``position_ids`` default to ``positions_from_mask`` of its last T columns."""
        s = self.stitch(stitch_id)
        overrides = overrides or {}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)[:, -input_ids.shape[1]:]
        h = self.anchors[s.front].model.embed_tokens(input_ids)
        for n, (anchor, layers) in enumerate(self.segments(stitch_id)):
            if n == 1:  # crossing from the front to the end anchor
                prefix = f"stitch_layers.{s.front}.{s.layer}."
                mine = {k[len(prefix):]: t for k, t in overrides.items() if k.startswith(prefix)}
                layer = self.stitch_layers[s.front][s.layer]
                # explicit casts: into the layer's own dtype (fp32 while training) and back into the
                # end anchor's, so a bf16 pair runs without autocast too
                h = h.to(self_or_base(layer).weight.dtype)
                h = functional_call(layer, mine, (h,)) if mine else layer(h)
                h = h.to(self.anchors[s.end].model.norm.weight.dtype)
            h = self._decode(anchor, layers, h, attention_mask, position_ids, caches, overrides)
        end = self.anchors[s.end]
        return end.lm_head(end.model.norm(h))

    def stop_ids(self, stitch_id: int, eos_token_id: int | list[int] | None = None) -> list[int]:
        """Ids that end generation of a stitch: ``eos_token_id`` (int or list) and every eos id of the
        end anchor's generation config (LLaMA-3-Instruct ends on either of two)."""
        ids = set()
        for given in (eos_token_id, self.anchors[self.stitch(stitch_id).end].generation_config.eos_token_id):
            if given is not None:
                ids |= set(given) if isinstance(given, list | tuple) else {int(given)}
        return sorted(ids)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, stitch_id: int,
                 max_new_tokens: int, use_cache: bool = True, eos_token_id: int | list[int] | None = None,
                 pad_token_id: int | None = None, overrides: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Greedy decoding from left-padded prompts; returns (B, T + new) like HF's ``generate``.
        A row stops at any id of ``stop_ids(stitch_id, eos_token_id)`` and continues with
        ``pad_token_id`` (default: the first stop id)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        stops = self.stop_ids(stitch_id, eos_token_id)
        stop = torch.tensor(stops, dtype=torch.long, device=input_ids.device)
        pad = (stops[0] if stops else 0) if pad_token_id is None else pad_token_id
        caches = self.new_caches() if use_cache else None
        seq, mask = input_ids, attention_mask
        done = torch.zeros(seq.shape[0], dtype=torch.bool, device=seq.device)
        step_ids = seq
        for _ in range(max_new_tokens):
            pos = positions_from_mask(mask)[:, -step_ids.shape[1]:]
            logits = self(step_ids, mask, stitch_id, position_ids=pos, caches=caches, overrides=overrides)
            nxt = logits[:, -1].argmax(-1)
            if stops:
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                done |= torch.isin(nxt, stop)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            step_ids = nxt[:, None] if use_cache else seq
            if stops and done.all():
                break
        return seq


# ---------------------------------------------------------------------------------------------
# Least-squares initialisation (spec §11 "LS init")


def self_or_base(module: nn.Module) -> nn.Module:
    """The plain ``nn.Linear`` under a peft LoRA wrapper (or the module itself)."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


@torch.no_grad()
def _layer_inputs(net: StitchedLlama, anchor: int, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """Residual stream of one anchor at its non-pad tokens, each (tokens, d): ``[i]`` is the input of
    layer i (the embeddings for i = 0) and ``[L]`` the last layer's output *before* the final norm.
    This is HF's ``output_hidden_states`` except its last entry, which HF gives after the norm; the
    paired rule's j = L-1 positions need the stream itself."""
    model = net.anchors[anchor].model
    pos = positions_from_mask(attention_mask)
    h = model.embed_tokens(input_ids)
    keep = attention_mask.bool()
    out = [h[keep].float().cpu()]
    for i in range(model.config.num_hidden_layers):
        h = net._decode(anchor, range(i, i + 1), h, attention_mask, pos, None, {})
        out.append(h[keep].float().cpu())
    return out


@torch.no_grad()
def ls_init(net: StitchedLlama, batches: list[tuple[torch.Tensor, torch.Tensor]], ridge: float = 0.0,
            max_tokens: int | None = 4096) -> dict[int, float]:
    """Initialise every stitching layer by least squares on training tokens (anchors in eval mode).

    For position (j, k): X = the front's output of layer j, Y = the end's input of layer k (HF's
    ``hidden_states[j+1]`` and ``hidden_states[k]``), over the non-pad tokens of ``batches`` of
    ``(input_ids, attention_mask)``, capped at ``max_tokens``; float64, optional ``ridge``
    (``esta.lstsq.fit_shared_layers``). A layer shared by several positions (paired rule) takes the
    mean of their solutions (SN-Net's rule). Returns, per stitch id, the relative residual of the
    layer actually installed.
    """
    was_training = net.training
    net.eval()
    states = [[] for _ in net.anchors]  # states[a] = per-batch lists of per-layer inputs
    seen = 0
    for ids, mask in batches:
        if max_tokens is not None and seen >= max_tokens:
            break  # enough rows; the hidden states of every layer of both anchors are kept
        for a in range(len(net.anchors)):
            states[a].append(_layer_inputs(net, a, ids, mask))
        seen += int(mask.sum())
    per_layer = [[torch.cat(col)[:max_tokens] for col in zip(*runs)] for runs in states]
    positions = [((s.front, s.layer), s.stitch_id, per_layer[s.front][s.j + 1], per_layer[s.end][s.k])
                 for s in net.table if not s.is_anchor]
    layers, residual = fit_shared_layers(positions, ridge)
    for (p, layer), (w, b) in layers.items():
        lin = self_or_base(net.stitch_layers[p][layer])
        lin.weight.copy_(w.to(lin.weight))
        lin.bias.copy_(b.to(lin.bias))
    net.train(was_training)
    return residual
