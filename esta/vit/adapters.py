"""Bottleneck adapters for PST's PEFT choice (ESTA §4 "PST with other PEFT techniques"; spec §5).

The paper builds PST on LoRA and reports that Adapter and AdaptFormer give similar results. peft
implements LoRA, DoRA and IA³ for plain ``nn.Linear`` (esta.vit.tuning injects those), but neither
bottleneck adapter, so they are written here in the shape of a peft layer: a wrapper holding the
wrapped module as ``base_layer``, with its own trainable submodules named in
``adapter_layer_names``.

- **Adapter** (Houlsby et al. 2019): a serial bottleneck after the attention and MLP sub-layers,
  ``h + up(act(down(h)))`` on the output ``h`` of ``attn.proj`` and of ``mlp.fc2``.
- **AdaptFormer** (Chen et al. 2022): a parallel bottleneck beside the MLP,
  ``mlp(x) + s * up(relu(down(x)))`` on the MLP's input ``x`` (the block's ``norm2`` output) [decision:
  AdaptFormer's code feeds the un-normalised residual stream; here both branches see the same input,
  so the wrapper is local to the MLP].

The up-projection starts at zero, so a fresh adapter is the identity of the wrapped module. Both are
stitch-agnostic: one adapter per anchor sub-layer, shared by every stitch that passes it. Adapters
cannot be merged into a linear layer, so an exported stitch keeps them (``inject_bottleneck`` rebuilds
them on load).
"""

from __future__ import annotations

import re

import torch
from torch import nn

__all__ = ["BottleneckLayer", "SerialAdapter", "ParallelAdapter", "KINDS", "inject_bottleneck", "bottleneck_layers"]


class BottleneckLayer(nn.Module):
    """``base_layer`` plus a bottleneck ``up(act(down(.)))`` scaled by ``scale``; see subclasses."""

    adapter_layer_names = ("adapter_down", "adapter_up")

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, scale: float, act: type[nn.Module]):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        self.base_layer = base_layer
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.adapter_act = act()
        self.adapter_up = nn.Linear(bottleneck, dim)
        self.scale = float(scale)
        with torch.no_grad():  # down keeps nn.Linear's init; a fresh adapter adds exactly zero
            self.adapter_down.bias.zero_()
            self.adapter_up.weight.zero_()
            self.adapter_up.bias.zero_()
        ref = next(base_layer.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.adapter_up(self.adapter_act(self.adapter_down(x)))


class SerialAdapter(BottleneckLayer):
    """Houlsby's adapter on a sub-layer's output linear: ``h + branch(h)``, ``h = base_layer(x)``."""

    def __init__(self, base_layer: nn.Linear, bottleneck: int, scale: float = 1.0):
        super().__init__(base_layer, base_layer.out_features, bottleneck, scale, nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base_layer(x)
        return h + self.branch(h)


class ParallelAdapter(BottleneckLayer):
    """AdaptFormer's AdaptMLP beside a timm ``Mlp``: ``base_layer(x) + branch(x)``."""

    def __init__(self, base_layer: nn.Module, bottleneck: int, scale: float = 0.1):
        dim = base_layer.fc1.in_features
        if base_layer.fc2.out_features != dim:
            raise ValueError(f"AdaptFormer needs an MLP with equal in/out width, got {dim} -> {base_layer.fc2.out_features}")
        super().__init__(base_layer, dim, bottleneck, scale, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.branch(x)


# Which modules each kind wraps, by qualified name (blocks of a timm ViT, a StitchedViT, an exported stitch).
KINDS = {
    "adapter": (SerialAdapter, r"(.*\.)?blocks\.\d+\.(attn\.proj|mlp\.fc2)"),
    "adaptformer": (ParallelAdapter, r"(.*\.)?blocks\.\d+\.mlp"),
}


def inject_bottleneck(model: nn.Module, kind: str, bottleneck: int, scale: float) -> list[str]:
    """Wrap every target module of ``kind`` in ``model`` in place; returns the wrapped names."""
    if kind not in KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; known: {sorted(KINDS)}")
    cls, pattern = KINDS[kind]
    names = [n for n, m in model.named_modules() if re.fullmatch(pattern, n) and not isinstance(m, BottleneckLayer)]
    if not names:
        raise ValueError(f"{kind}: no module of the model matches {pattern!r}")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        setattr(owner, child, cls(getattr(owner, child), bottleneck, scale))
    return names


def bottleneck_layers(model: nn.Module) -> list[BottleneckLayer]:
    return [m for m in model.modules() if isinstance(m, BottleneckLayer)]
