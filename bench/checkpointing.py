"""Gradient checkpointing of the PST step (``train.grad_checkpointing``): memory saved, time paid.

``StitchedViT.set_grad_checkpointing`` recomputes each anchor block in the backward pass, so a step
keeps only the block inputs instead of every activation the backward needs. Measured on stitch 56
at ``Settings.ckpt_batch`` (the paper's 64; 2 in ``--quick``), for PST and full fine-tuning, each
with and without checkpointing:

- memory of a step: on CUDA, ``torch.cuda.max_memory_allocated`` over one step. On CPU, parameters
  + gradients + AdamW state (as in ``bench.training``) + the bytes *held for backward*: every
  storage created during the forward that is still alive when it ends (a ``TorchDispatchMode``
  keeps weak references to the outputs of every op; parameters excluded). Unlike the
  ``saved_tensors_hooks`` count, this also sees the block inputs a non-reentrant checkpoint keeps.
  It leaves out the transient peak of the backward (one block recomputed at a time).
- ``pst_ckpt_vs_plain_memory``: PST with / without checkpointing.
- ``pst_vs_full_memory_ckpt``: PST over full fine-tuning, both checkpointed -- the paper's claim
  (PST needs well under half of full fine-tuning's memory, target <= 0.5) at batch 64; the note
  says whether it holds without checkpointing too.
- ``pst_ckpt_vs_plain_step_flops``: FLOPs of forward + backward of a PST step with / without
  checkpointing (``FlopCounterMode`` on the meta device, the recomputation included): the price, one
  extra forward of the blocks, free of timing noise.
- ``pst_ckpt_vs_plain_step_time``: time of a PST step with / without checkpointing at the training
  batch (paired ABBA race).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.common import STITCH, Row, Settings, count_flops, images, labels, meta_model, race, row, sync
from esta.vit.tuning import TuningConfig

__all__ = ["held_for_backward", "checkpoint_memory", "checkpoint_rows"]


class LiveStorages(TorchDispatchMode):
    """Weak references to the storage of every tensor an op creates while the mode is on."""

    def __init__(self):
        super().__init__()
        self.made: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                # keyed by address: a storage created where a freed one lived replaces it
                self.made[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        return out

    def alive_bytes(self, exclude: set[int]) -> int:
        return sum(n for ptr, (ref, n) in self.made.items() if ptr not in exclude and not ref.expired())


def held_for_backward(trainer) -> tuple[torch.Tensor, int]:
    """The loss of ``trainer``'s batch, and the bytes of the storages its forward leaves alive."""
    params = {p.untyped_storage().data_ptr() for p in trainer.model.parameters()}
    live = LiveStorages()
    with live:
        loss = trainer.loss()
    return loss, live.alive_bytes(params)


def checkpoint_memory(trainer, batch: int, base: dict[str, int]) -> dict[str, dict[str, int]]:
    """Bytes of a step at ``batch`` without and with checkpointing (``plain``, ``ckpt``). ``base``
    is ``Trainer.memory()`` at the training batch: its parameters, gradients and AdamW state do
    not depend on the batch."""
    tr = trainer.with_batch(batch)
    out = {}
    for key, flag in (("plain", False), ("ckpt", True)):
        tr.model.set_grad_checkpointing(flag)
        if tr.device.type == "cuda":
            out[key] = tr.memory()
        else:
            loss, held = held_for_backward(tr)
            del loss
            out[key] = dict({k: base[k] for k in ("params", "grads", "adamw")}, held=held)
            out[key]["total"] = sum(out[key].values())
    trainer.model.set_grad_checkpointing(False)
    return out


def step_flops(checkpointing: bool, batch: int) -> int:
    """FLOPs of forward + backward of a PST step on the meta device (recomputation included)."""
    model = meta_model(TuningConfig(mode="pst")).train()
    model.set_grad_checkpointing(checkpointing)
    x, y = images(batch, "meta"), labels(batch, "meta")
    return count_flops(lambda: F.cross_entropy(model(x, STITCH), y).backward())


def checkpoint_rows(pst, memory: dict[str, dict], st: Settings, device: torch.device) -> list[Row]:
    """The rows of the module docstring; ``memory`` is ``checkpoint_memory`` per method."""

    def flip(flag: bool):
        def step() -> None:
            pst.model.set_grad_checkpointing(flag)
            pst.step()
            sync(device)

        return step

    pair = race(flip(True), flip(False), st.train_reps, 1, device, st.budget_s)
    pst.model.set_grad_checkpointing(False)
    flops = {flag: step_flops(flag, st.train_batch) for flag in (False, True)}

    total = {(m, k): memory[m][k]["total"] for m in memory for k in ("plain", "ckpt")}
    mib = {f"{m} {k}": ", ".join(f"{n} {v / 2**20:.0f}" for n, v in memory[m][k].items())
           for m in memory for k in ("plain", "ckpt")}
    parts = "; MiB " + "; ".join(f"{k} [{v}]" for k, v in mib.items())
    where = f"stitch {STITCH}, batch {st.ckpt_batch}"
    plain_ratio = total["pst", "plain"] / total["full", "plain"]
    ckpt_ratio = total["pst", "ckpt"] / total["full", "ckpt"]
    claim = (
        f"paper's claim PST <= 0.5x full memory: {'holds' if plain_ratio <= 0.5 else 'fails'} without "
        f"checkpointing ({plain_ratio:.2f}), {'holds' if ckpt_ratio <= 0.5 else 'fails'} with both "
        f"checkpointed ({ckpt_ratio:.2f}); PST checkpointed vs full plain "
        f"{total['pst', 'ckpt'] / total['full', 'plain']:.2f}"
    )
    return [
        row("pst_ckpt_vs_plain_memory", total["pst", "ckpt"] / total["pst", "plain"], "-", "ratio",
            f"{where}{parts}"),
        row("pst_vs_full_memory_ckpt", ckpt_ratio, "<= 0.5", "ratio", f"{where}; {claim}"),
        row("pst_ckpt_vs_plain_step_flops", flops[True] / flops[False], "-", "ratio",
            f"checkpointed {flops[True] / 1e9:.1f} vs plain {flops[False] / 1e9:.1f} GFLOP fwd+bwd, "
            f"stitch {STITCH}, batch {st.train_batch}"),
        row("pst_ckpt_vs_plain_step_time", pair.ratio, "-", "ratio",
            f"checkpointed {pair.med('a'):.3f} s, plain {pair.med('b'):.3f} s, stitch {STITCH}, "
            f"batch {st.train_batch}{pair.noise}"),
    ]
