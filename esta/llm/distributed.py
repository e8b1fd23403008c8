"""Data-parallel Stitched LLaMA training (spec §1 "Scale-out", §11 "Data parallel with a per-step
parameter subset"; issue 12 item 10).

A step trains one stitch, so only that stitch's biases and the LoRA on its path get gradients, and
every rank must train the *same* stitch (SN-Net's own code seeds the sampler by rank and so trains a
different stitch per rank; we do not). Hence no DDP wrapper but four explicit pieces:

- every rank builds the sampler with the same seed, so the draws agree as long as the importances do;
- ``data_parallel(model)`` broadcasts rank 0's trainable state once, so all ranks start equal;
- ``TunableLlama.loss`` takes the rank's contiguous share of each global batch (``shard``) and
  normalises its summed token NLL by the *global* number of target tokens (``global_token_mean``), so
  the ranks' averaged gradient is the gradient of the full batch's token mean even when the shares
  hold different numbers of response tokens; the loss's value is that full-batch token mean on every
  rank, so what the training loop hands the sampler (the ``loss`` score) and writes to the history is
  the global batch's, as in one process;
- ``TunableLlama.reduce_grads`` (``allreduce_grads``) averages the non-None gradients over ranks in a
  fixed order (the model's parameter order, one flat buffer, one collective) after backward and before
  the importance and the optimizer step, so the importance, the sampler state and the update are the
  same on every rank.

Launch with ``torchrun --nproc_per_node N``; ``init_process_group`` picks gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["init_process_group", "data_parallel", "shard", "global_token_mean", "allreduce_grads"]


def init_process_group(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` ...):
    gloo for CPU, nccl for CUDA (each rank on GPU ``LOCAL_RANK``). Returns (rank, world size)."""
    device = torch.device(device)
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"data-parallel training needs torchrun's environment; {missing} are not set "
                           "(launch with: torchrun --nproc_per_node N ...)")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


@torch.no_grad()
def data_parallel(model) -> None:
    """Make ``model`` (a ``TunableLlama``) one replica of a data-parallel run in the initialised
    process group: rank 0's trainable state is broadcast (in name order) and the model learns its
    rank and world size, which its ``loss`` and ``reduce_grads`` use."""
    if not dist.is_initialized():
        raise RuntimeError("data_parallel: torch.distributed is not initialised (see init_process_group)")
    for _, p in sorted(model.trainable().items()):
        dist.broadcast(p.data, src=0)
    model.rank, model.world = dist.get_rank(), dist.get_world_size()


def shard(batch: tuple[torch.Tensor, ...], rank: int, world: int) -> tuple[torch.Tensor, ...]:
    """Rank ``rank``'s contiguous share of a global batch (shares differ by at most one row)."""
    if len(batch[0]) < world:
        raise ValueError(f"a global batch of {len(batch[0])} rows cannot feed {world} ranks; raise batch_size")
    return tuple(torch.tensor_split(t, world)[rank] for t in batch)


def global_token_mean(total: torch.Tensor, count: torch.Tensor, world: int) -> torch.Tensor:
    """This rank's ``total`` (summed over its ``count`` target tokens) as a loss whose *gradient* is this
    rank's share, scaled so that the mean over ranks of the gradients is the gradient of the global batch's
    token mean (``allreduce_grads`` takes that mean), and whose *value* is the global batch's token mean
    itself, the sum over ranks of ``total`` divided by the global ``count``: an all-reduced, detached
    scalar, so that the sampler's loss statistic, the history and ``stats.csv`` see the whole batch on
    every rank (one collective for both sums)."""
    sums = torch.stack([total.detach().float(), count.detach().float()])
    dist.all_reduce(sums)  # (global summed NLL, global target tokens)
    tokens = sums[1].clamp(min=1)
    share = total * world / tokens
    return share + (sums[0] / tokens - share).detach()


@torch.no_grad()
def allreduce_grads(params: Iterable[torch.nn.Parameter], world: int) -> None:
    """Average the non-None gradients of ``params`` over ranks, in the given (fixed) order. Every rank
    must hold gradients for the same parameters, which one shared stitch per step guarantees."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))
