"""Pretraining the tiny LLaMA anchors of the offline default on procedural tasks A (spec §11
"Offline default").

An anchor is pretrained fully (every weight trains) by the shared loop ``esta.train.train``: it is
the one-stitch case of that loop, as the vision family's upstream pretraining is. ``FullLlama`` gives
one ``LlamaForCausalLM`` the loop's interface; its importance set is empty (one stitch: nothing to
sample between), so the sampler only counts visits. Each anchor gets its own step budget and
learning rate: a wider, deeper anchor needs more, smaller steps (spec §11: at one lr and one time
budget the larger anchor came out worse).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from esta.sampling import SamplerConfig, StitchSampler
from esta.train import TrainConfig, TrainResult, train
from esta.tunable import adamw_groups, trainable_of

__all__ = ["FullLlama", "trim", "pretrain"]


def trim(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Cut right padding common to every row of a ``(input_ids, attention_mask, labels)`` batch:
    rows are padded to the longest of the whole set, a batch rarely needs all of it."""
    ids, mask, labels = batch
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width], labels[:, :width]


class FullLlama(nn.Module):
    """One ``LlamaForCausalLM`` under ``esta.train.train``, every parameter trainable
    (``esta.tunable.Trainable``: one process, one stitch)."""

    rank = 0

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.lm.requires_grad_(True)

    def loss(self, batch: tuple[torch.Tensor, ...], stitch_id: int) -> torch.Tensor:
        """Response-only next-token cross-entropy, as ``TunableLlama.loss``."""
        ids, mask, labels = trim(batch)
        logits = self.lm(input_ids=ids, attention_mask=mask).logits
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)

    def importance_params(self, stitch_id: int) -> list[nn.Parameter]:
        return []  # one stitch: no importance to track

    def trainable(self) -> dict[str, nn.Parameter]:
        return trainable_of(self)

    def param_groups(self, lr: float, lr_anchor: float | None, weight_decay: float, decay_1d: bool = False) -> list[dict]:
        """Matrices with ``weight_decay``, 1-D parameters (RMSNorm weights) without, unless ``decay_1d``."""
        return adamw_groups(self.trainable(), lr, weight_decay, decay_1d)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """HF's own non-reentrant gradient checkpointing of the decoder layers."""
        if enable:
            self.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(use_reentrant=False))
        else:
            self.lm.gradient_checkpointing_disable()

    def reduce_grads(self, stitch_id: int) -> None:
        """Pretraining runs in one process: nothing to reduce."""


def pretrain(lm: nn.Module, data: TensorDataset, steps: int, batch_size: int, lr: float, weight_decay: float,
             warmup_frac: float, seed: int, device: torch.device | str = "cpu", ckpt_dir=None,
             settings: dict | None = None, checkpoint_every_s: float = 600.0) -> TrainResult:
    """Train ``lm`` in place for ``steps`` optimizer steps of ``batch_size`` records of ``data``."""
    if steps < 1:
        raise ValueError(f"pretraining steps must be >= 1, got {steps}")
    per_epoch = math.ceil(len(data) / batch_size)
    epochs = steps / per_epoch  # TrainConfig counts epochs; this many give exactly `steps` steps
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                      warmup_epochs=warmup_frac * epochs, seed=seed, checkpoint_every_s=checkpoint_every_s)
    model = FullLlama(lm)
    sampler = StitchSampler(1, cfg.total_steps(len(data)), SamplerConfig(kind="uniform"), seed=seed)
    return train(model, data, cfg, sampler, ckpt_dir, settings=settings, device=device, progress=False)
