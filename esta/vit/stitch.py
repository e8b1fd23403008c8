"""Stitchable ViTs over an anchor family (SN-Net, Pan et al. CVPR 2023; ESTA §3; spec §2-§4).

A *stitch* runs the front anchor's blocks ``0..j``, a linear stitching layer, then the end anchor's
blocks ``k..D_e-1``, final norm and head. The stitch table (ids, positions, shared stitching layers)
is the method core's (``esta.stitches``): SN-Net's paired rule for a family of equal depth, 71
stitches for ViT-Ti/S/B; the depth rule of spec §11 for anchors of different depths (e.g. ViT-S/B/L,
12/12/24 blocks; spec §13). This module runs stitches through timm's modules, fits the stitching layers
by least squares (``esta.lstsq``) and counts each anchor part's cost for ``esta.costs``.

FLOPs are multiply-accumulates (MACs) at batch 1, SN-Net's and fvcore's convention, counted with
``torch.utils.flop_counter`` (which reports 2 FLOPs per MAC; we halve it) once per anchor block on
the meta device and summed per stitch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from itertools import islice

import pandas as pd
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from esta import costs, stitches
from esta.lstsq import fit_shared_layers
from esta.vit.anchors import check_family

__all__ = [
    "StitchedViT",
    "embed",
    "head",
    "ls_init",
    "anchor_costs",
    "stitch_costs",
]


def embed(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ViT input stem: patch embed, cls/pos embedding, patch drop, pre-norm -> (B, N, C)."""
    h = vit._pos_embed(vit.patch_embed(x))
    if isinstance(h, tuple):  # EVA: (tokens, rotary embedding), patch drop applied inside; no RoPE here
        return vit.norm_pre(h[0])  # (esta.vit.timm_family refuses EVA models with RoPE)
    return vit.norm_pre(vit.patch_drop(h))


def head(vit: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """timm's final norm and classification head on block output ``h`` (B, N, C) -> (B, classes)."""
    return vit.forward_head(vit.norm(h))


class StitchedViT(nn.Module):
    """Anchors plus one set of stitching layers per neighbouring pair; ``forward(x, stitch_id)``.

    Anchors may differ in depth: the table comes from ``esta.stitches.enumerate_stitches`` under
    ``esta.stitches.default_rule`` (paired for equal depths, depth otherwise), and each pair gets as
    many stitching layers as its positions use.

    The stitch is an argument of ``forward``, never stored state, and ``forward`` draws no random
    numbers, so any stitch can be evaluated, traced or called with substituted parameters
    (``torch.func.functional_call``) without side effects.

    ``set_grad_checkpointing(True)`` recomputes each anchor block in the backward pass instead of
    keeping its activations. The net runs the anchors' blocks itself, so timm's own
    ``set_grad_checkpointing`` (which acts in ``VisionTransformer.forward_features``) has no effect here.
    """

    def __init__(self, anchors: list[nn.Module]):
        super().__init__()
        check_family(anchors)
        self.anchors = nn.ModuleList(anchors)
        self.depths = [len(a.blocks) for a in anchors]
        self.rule = stitches.default_rule(self.depths)
        self.table = stitches.enumerate_stitches(self.depths, [a.embed_dim for a in anchors], self.rule)
        self.stitch_layers = nn.ModuleList(
            nn.ModuleList(nn.Linear(anchors[p].embed_dim, anchors[p + 1].embed_dim) for _ in range(n))
            for p, n in enumerate(stitches.layer_counts(self.table))
        )
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every anchor block in the backward pass (memory for time, ~1 extra forward)."""
        self.grad_checkpointing = bool(enable)

    def run_blocks(self, blocks: Iterable[nn.Module], h: torch.Tensor) -> torch.Tensor:
        """``blocks(h)``, each block checkpointed when enabled and gradients are being recorded."""
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            for blk in blocks:  # a ModuleList (EVA) or nn.Sequential (ViT)
                h = blk(h)
            return h
        for blk in blocks:
            # Recomputation runs in the backward pass, after a ``functional_call`` around forward
            # (PST's stitch biases) has put the module's own parameters back. So the tensors the
            # block uses now are captured and handed to the recomputation explicitly.
            state = {**dict(blk.named_parameters()), **dict(blk.named_buffers())}
            h = checkpoint(_call_with, blk, state, h, use_reentrant=False)
        return h

    @property
    def num_stitches(self) -> int:
        return len(self.table)

    def stitch(self, stitch_id: int) -> stitches.Stitch:
        return stitches.lookup(self.table, stitch_id)

    def stitch_layer(self, s: stitches.Stitch) -> nn.Module:
        return self.stitch_layers[s.front][s.layer]

    def front_states(self, x: torch.Tensor, anchor: int, upto: int | None = None) -> list[torch.Tensor]:
        """Outputs of anchor blocks 0..upto (all by default) for input images ``x``."""
        vit = self.anchors[anchor]
        h = embed(vit, x)
        states = []
        for blk in vit.blocks[: (len(vit.blocks) if upto is None else upto + 1)]:
            h = blk(h)
            states.append(h)
        return states

    def tail(self, h: torch.Tensor, stitch_id: int) -> torch.Tensor:
        """Finish stitch ``stitch_id`` from the front anchor's block-``j`` output ``h`` (its last
        block's for an anchor): stitching layer, end blocks ``k..``, final norm, head."""
        s = self.stitch(stitch_id)
        if s.is_anchor:
            return head(self.anchors[s.front], h)
        end = self.anchors[s.end]
        h = self.run_blocks(islice(end.blocks, s.k, None), self.stitch_layer(s)(h))
        return head(end, h)

    def forward(self, x: torch.Tensor, stitch_id: int) -> torch.Tensor:
        s = self.stitch(stitch_id)
        vit = self.anchors[s.front]
        cut = self.depths[s.front] if s.is_anchor else s.j + 1
        # islice, not blocks[:cut]: slicing an nn.Sequential builds a new module on every call
        h = self.run_blocks(islice(vit.blocks, cut), embed(vit, x))
        return self.tail(h, stitch_id)

    def path_prefixes(self, stitch_id: int) -> list[str]:
        """Qualified-name prefixes of every module and parameter stitch ``stitch_id`` runs through."""
        s = self.stitch(stitch_id)
        f = f"anchors.{s.front}."
        stem = [f + n for n in ("patch_embed.", "cls_token", "reg_token", "pos_embed", "norm_pre.")]
        if s.is_anchor:
            return [f]
        e = f"anchors.{s.end}."
        front_blocks = [f"{f}blocks.{b}." for b in range(s.j + 1)]
        end_blocks = [f"{e}blocks.{b}." for b in range(s.k, self.depths[s.end])]
        finish = [e + n for n in ("norm.", "fc_norm.", "head.")]
        return stem + front_blocks + [f"stitch_layers.{s.front}.{s.layer}."] + end_blocks + finish

    def on_path(self, name: str, stitch_id: int) -> bool:
        """Whether the parameter or module called ``name`` lies on stitch ``stitch_id``'s path."""
        return stitches.on_path(name, self.path_prefixes(stitch_id))


def _call_with(block: nn.Module, state: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """``block(h)`` with the given parameters and buffers (the ones current at forward time)."""
    return functional_call(block, state, (h,))


# ---------------------------------------------------------------------------------------------
# Least-squares initialisation (spec §4)


@torch.no_grad()
def ls_init(net: StitchedViT, images: torch.Tensor) -> dict[tuple[int, int], float]:
    """Initialise every stitching layer by least squares on one batch of un-augmented images.

    For position (j, k): X = front output of block j, Y = end input of block k (its stem output when
    k = 0), tokens flattened to rows (``esta.lstsq.fit_shared_layers``: a layer shared by several
    positions takes the element-wise mean of their solutions, SN-Net's rule). Returns, per
    (pair, layer), the mean relative residual of its positions under the installed layer.
    """
    was_training = net.training
    net.eval()
    positions = []
    for p in range(len(net.anchors) - 1):
        xs = [s.flatten(0, 1) for s in net.front_states(images, p)]  # (B*N, Cf) per block
        end = net.anchors[p + 1]
        h = embed(end, images)
        ys = [h.flatten(0, 1)]  # ys[k] = input of end block k
        for blk in end.blocks:
            h = blk(h)
            ys.append(h.flatten(0, 1))
        positions += [((p, s.layer), s.stitch_id, xs[s.j], ys[s.k])
                      for s in net.table if s.front == p and not s.is_anchor]
    layers, residual = fit_shared_layers(positions)
    for (p, layer), (w, b) in layers.items():
        lin = net.stitch_layers[p][layer]
        lin.weight.copy_(w.to(lin.weight.dtype))
        lin.bias.copy_(b.to(lin.bias.dtype))
    net.train(was_training)
    per_layer: dict[tuple[int, int], list[float]] = {}
    for key, sid, _, _ in positions:
        per_layer.setdefault(key, []).append(residual[sid])
    return {key: sum(r) / len(r) for key, r in per_layer.items()}


# ---------------------------------------------------------------------------------------------
# FLOPs (MACs) and parameters per stitch (spec §3)


def _macs(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() // 2  # flop_counter counts 2 FLOPs per multiply-accumulate


def _numel(*modules_or_params) -> int:
    total = 0
    for m in modules_or_params:
        if m is None:
            continue
        if isinstance(m, nn.Parameter | torch.Tensor):
            total += m.numel()
        else:
            total += sum(p.numel() for p in m.parameters())
    return total


@torch.no_grad()
def anchor_costs(vit: nn.Module) -> costs.AnchorCost:
    """Count one anchor part by part on the meta device (with attention unfused, so that the
    attention matmuls are seen; timm's ``set_fused_attn`` only affects modules built after it)."""
    vit = copy.deepcopy(vit).to("meta").eval()
    for blk in vit.blocks:
        blk.attn.fused_attn = False
    size = vit.patch_embed.img_size
    x = torch.empty(1, 3, *size, device="meta")
    stem_macs = _macs(lambda t: embed(vit, t), x)
    h = embed(vit, x)
    block_macs = [_macs(blk, h) for blk in vit.blocks]
    norm_macs = _macs(vit.norm, h)
    head_macs = _macs(vit.forward_head, h)
    stem = [vit.patch_embed, vit.cls_token, vit.reg_token, vit.pos_embed, vit.norm_pre]
    return costs.AnchorCost(
        stem_macs=stem_macs,
        block_macs=block_macs,
        norm_macs=norm_macs,
        head_macs=head_macs,
        stem_params=_numel(*stem),
        block_params=[_numel(b) for b in vit.blocks],
        norm_params=_numel(vit.norm),
        head_params=_numel(vit.fc_norm, vit.head),
        tokens=h.shape[1],
        width=h.shape[2],
    )


def stitch_costs(anchors: list[nn.Module], names: list[str] | None = None) -> pd.DataFrame:
    """The stitch table with MACs per image and parameters per stitch (``esta.costs.stitch_costs``);
    parameters count the front anchor's cls/pos embeddings (SN-Net's tables leave them out)."""
    names = names or [f"anchor{i}" for i in range(len(anchors))]
    return costs.stitch_costs([anchor_costs(a) for a in anchors], names, unit="image")
