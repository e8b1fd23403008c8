"""What the training loop, the importance score and the analyses need of a family's tunable stitched
model (ESTA §3, spec §5-§7, §11), written down once.

``TunableStitches`` is a ``typing.Protocol`` (STYLE: no base classes): ``esta.vit.tuning.TunableViT``
and ``esta.llm.tuning.TunableLlama`` implement it explicitly, and ``esta.train.train`` calls it
without probing. A batch is a tuple of tensors exactly as the family's data set yields it
(``(images, labels)`` for ViTs, ``(input_ids, attention_mask, labels)`` for decoders); only the
family's ``loss`` unpacks it.

The helpers below are the parts both families share: the trainable set by name, its size, the
cached Θ_s of SNIP importance, and AdamW's parameter groups.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from esta.stitches import Stitch, on_path

__all__ = ["StitchedNet", "Trainable", "TunableStitches", "trainable_of", "count_trainable", "path_params", "adamw_groups"]


@runtime_checkable
class StitchedNet(Protocol):
    """A family's stitched model: anchors, stitching layers and the stitch table."""

    table: list[Stitch]
    stitch_layers: nn.ModuleList

    @property
    def num_stitches(self) -> int: ...

    def stitch(self, stitch_id: int) -> Stitch: ...

    def path_prefixes(self, stitch_id: int) -> list[str]: ...

    def on_path(self, name: str, stitch_id: int) -> bool: ...

    def named_parameters(self, *args, **kwargs): ...


@runtime_checkable
class Trainable(Protocol):
    """What ``esta.train.train`` calls: a model whose trainable set is settled (PST or full
    fine-tuning; a single anchor is the one-stitch case)."""

    rank: int  # this process's rank in a data-parallel run (0 alone); rank 0 writes checkpoints

    def loss(self, batch: tuple[torch.Tensor, ...], stitch_id: int) -> torch.Tensor:
        """The training loss of stitch ``stitch_id`` on a batch as the family's data set yields it."""

    def importance_params(self, stitch_id: int) -> list[nn.Parameter]:
        """Θ_s of SNIP importance (spec §6); empty where the method samples without importance."""

    def trainable(self) -> dict[str, nn.Parameter]:
        """Every parameter that trains, by qualified name."""

    def param_groups(self, lr: float, lr_anchor: float | None, weight_decay: float,
                     decay_1d: bool = False) -> list[dict]:
        """AdamW's parameter groups; the first is the ``lr`` group with decay."""

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute anchor blocks in the backward pass."""

    def reduce_grads(self, stitch_id: int) -> None:
        """After backward: make the gradients those of the global batch (data parallel; else nothing)."""


@runtime_checkable
class TunableStitches(Trainable, Protocol):
    """A ``Trainable`` over a stitched model ``net``: what the importance refresh and the analyses
    (``esta.sampling``, ``esta.analysis``) also need."""

    net: StitchedNet

    def biases_for(self, stitch_id: int) -> dict[str, nn.Parameter]:
        """The stitch's own biases by the parameter they stand in for ({} when biases are shared)."""


def trainable_of(module: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter of ``module`` that trains, by qualified name."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def count_trainable(model: Trainable) -> int:
    """Trainable parameters of any family's tunable model (one number for every family)."""
    return sum(p.numel() for p in model.trainable().values())


def path_params(net: StitchedNet, stitch_id: int, keep: Callable[[str, nn.Parameter], bool]) -> list[nn.Parameter]:
    """The parameters of ``net`` on stitch ``stitch_id``'s path that ``keep(name, param)`` admits,
    in ``named_parameters`` order."""
    prefixes = net.path_prefixes(stitch_id)
    return [p for n, p in net.named_parameters() if keep(n, p) and on_path(n, prefixes)]


def adamw_groups(named: dict[str, nn.Parameter], lr: float, weight_decay: float, decay_1d: bool = False,
                 lr_of: Callable[[str], float] | None = None, no_decay_names: frozenset[str] = frozenset()) -> list[dict]:
    """AdamW groups by (learning rate, weight decay). ``lr_of(name)`` gives a parameter's learning
    rate (default ``lr``); unless ``decay_1d``, 1-D parameters (biases, norms, stitch biases) and the
    parameters whose last name part is in ``no_decay_names`` get no weight decay (timm's
    ``param_groups_weight_decay`` rule). The first group is the ``lr`` group with decay (the one the
    training log reports), then the other ``lr`` groups, then the rest."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for n, p in named.items():
        no_decay = not decay_1d and (p.ndim <= 1 or n.rsplit(".", 1)[-1] in no_decay_names)
        key = (lr if lr_of is None else lr_of(n), 0.0 if no_decay else weight_decay)
        groups.setdefault(key, []).append(p)
    first = (lr, weight_decay)
    order = sorted(groups, key=lambda k: (k != first, k[0] != lr, k))
    return [dict(params=groups[k], lr=k[0], weight_decay=k[1]) for k in order]
