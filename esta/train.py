"""The one training loop for both methods (ESTA §3, spec §5-§7).

Each step samples one stitch, runs the batch through it, backpropagates, records the stitch's
SNIP importance and takes an AdamW step (cosine schedule with linear warm-up). ESTA and SN-Net
differ only in the model's trainable set (a family's ``esta.tunable.Trainable``) and the sampler
(``esta.sampling``).

Training is resumable: trainable parameters, optimizer, sampler and RNG state are saved every
``checkpoint_every_s`` seconds and at the end to ``<ckpt_dir>/<settings hash>.pt`` (only the latest
is kept, written atomically), and a run resumes from it only when the hash of its settings matches.
The data order of every epoch is a function of (seed, epoch), and the random augmentation of every
sample a function of (seed, epoch, sample index): each item is fetched under torch's RNG seeded from
that triple, in the main process or a worker alike, so a run resumed mid-epoch (with any
``num_workers``) replays the same crops and flips. Elapsed time is stored in the checkpoint, so a
resumed run reports the time of all its segments.

Per-step losses and importances stay on the device and are copied to the host at checkpoints and at
the end: the loop itself synchronises with the device at most once per step (the importance
sampler's draw, which needs the moving average of the previous step).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from esta.sampling import StitchSampler, snip_importance
from esta.tunable import Trainable

__all__ = ["TrainConfig", "TrainResult", "train", "settings_hash", "pick_device", "iterate_batches",
           "item_seed", "SeededItems", "clear_checkpoints"]


@dataclass
class TrainConfig:
    """Optimisation recipe (spec §8 defaults: AdamW 1e-3, wd 1e-4, batch 64, 100 epochs, 10 warm-up)."""

    epochs: float = 100
    batch_size: int = 64
    lr: float = 1e-3
    lr_anchor: float | None = None  # SN-Net full fine-tuning: lr of anchor weights (1e-4)
    weight_decay: float = 1e-4
    warmup_epochs: float = 10
    seed: int = 0
    checkpoint_every_s: float = 600.0
    num_workers: int = 0
    # timm's default: 1-D parameters (biases, LayerNorm, PST's stitch biases) and pos_embed/cls_token
    # get no weight decay; True decays them too.
    decay_1d: bool = False
    grad_checkpointing: bool = False  # recompute blocks in backward: less activation memory, ~1 extra forward

    def __post_init__(self):
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0 or (self.lr_anchor is not None and self.lr_anchor <= 0):
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, lr_anchor={self.lr_anchor}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")

    def to_dict(self) -> dict:
        return asdict(self)

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps over ``epochs`` passes of ``n_examples`` (the last batch may be short)."""
        return max(1, round(self.epochs * math.ceil(n_examples / self.batch_size)))


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per step
    steps: int = 0
    resumed_from: int = 0  # step the run resumed at (0: fresh start)
    wall_s: float = 0.0  # training time of every segment of the run (a resumed run adds its own)
    wall_s_segment: float = 0.0  # of this call only
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # step -> trainable state


def pick_device(name: str = "auto") -> torch.device:
    """"auto" is CUDA when available, else CPU. On CUDA, float32 matmuls and convolutions may use
    TF32 (training also runs under bfloat16 autocast); asking for an absent GPU is an error."""
    device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"config device {name!r} asks for CUDA, but torch sees no GPU; use device: auto or cpu")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def settings_hash(settings: dict) -> str:
    """Stable hash of the settings that determine a run; a checkpoint resumes only on a match."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def item_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of torch's RNG while sample ``index`` of ``epoch`` is fetched (and augmented)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


class SeededItems(Dataset):
    """``data`` whose item ``(i, s)`` is ``data[i]`` fetched under torch's RNG seeded with ``s``.

    Random transforms (torchvision's draw from torch's RNG) then depend on the sample and its seed
    only, not on which worker fetches it or on what was fetched before: the property that makes a
    resume inside an epoch exact. The caller's RNG state is left as it was (``fork_rng``).
    """

    def __init__(self, data: Dataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.data[index]


def iterate_batches(data: Dataset, batches: list[list[int]], num_workers: int, pin: bool,
                    seed: int = 0, epoch: int = 0):
    """Batches in the given order; in-memory tensors are indexed directly (no per-sample collate).

    Any other data set is read through a DataLoader with each sample fetched under the RNG seed
    ``item_seed(seed, epoch, index)`` (``SeededItems``). The loader gets its own generator, so
    creating it does not draw from the global RNG (a resumed run creates it at another step).
    """
    if isinstance(data, TensorDataset):
        for idx in batches:
            yield tuple(t[idx] for t in data.tensors)
    else:
        keyed = [[(i, item_seed(seed, epoch, i)) for i in idx] for idx in batches]
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        yield from DataLoader(SeededItems(data), batch_sampler=keyed, num_workers=num_workers, pin_memory=pin,
                              generator=g)


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def clear_checkpoints(ckpt_dir: str | Path) -> None:
    """Remove a job's checkpoints once its outputs are written: a forced rerun then trains again
    instead of "resuming" a finished run."""
    for f in Path(ckpt_dir).glob("*.pt"):
        f.unlink()


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)
    for other in path.parent.glob("*.pt"):  # keep only the latest checkpoint
        if other != path:
            other.unlink()


def train(
    model: Trainable,
    data: Dataset,
    cfg: TrainConfig,
    sampler: StitchSampler,
    ckpt_dir: str | Path | None = None,
    settings: dict | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    snapshot_at: list[int] = (),
) -> TrainResult:
    """Train ``model`` in place on ``data``, one sampled stitch per step.

    ``model`` is any family's tunable stitched model (``esta.tunable.Trainable``):
    ``model.loss(batch, stitch_id)`` gives the training loss of a batch (a tuple of tensors, as the
    data set yields them), ``model.importance_params(stitch_id)`` the stitch's Θ_s,
    ``model.trainable()`` / ``model.param_groups(...)`` what the optimizer steps, and
    ``model.reduce_grads`` / ``model.rank`` make it one replica of a data-parallel run. There the
    loss's value must be the global batch's (``esta.llm.distributed.global_token_mean``): the loop hands
    it to the sampler (the ``loss`` score) and the history as it is.

    ``settings`` is everything that determines the run (config slices, input checksums); its hash
    names the checkpoint. ``stop_after`` ends the run after that many steps (tests of resume).
    ``snapshot_at``: step counts after which a copy of the trainable state is kept in
    ``result.snapshots`` (and in the checkpoint, so a resumed run keeps them).
    """
    device = torch.device(device)
    model.to(device).train()
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    n = len(data)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.total_steps(n)
    if sampler.total_steps != total:
        raise ValueError(f"sampler was built for {sampler.total_steps} steps, training runs {total}")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.lr_anchor, cfg.weight_decay, decay_1d=cfg.decay_1d))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup))
    trainable = model.trainable()
    result = TrainResult(steps=total)

    ckpt = None
    if ckpt_dir is not None:
        ckpt = Path(ckpt_dir) / f"{settings_hash(dict(settings or {}, train=cfg.to_dict()))}.pt"
    start = 0
    elapsed_before = 0.0  # training time of the earlier segments of a resumed run
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, value in state["params"].items():
                trainable[name].copy_(value)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        result.history = state["history"]
        result.snapshots = state.get("snapshots", {})
        start = result.resumed_from = state["step"]
        elapsed_before = float(state["elapsed_s"])

    # Losses and importances of the steps since the last flush, still on the device: one copy to
    # the host per flush instead of a sync per step.
    pending: list[tuple[dict, torch.Tensor, torch.Tensor | None]] = []

    def flush_history() -> None:
        if not pending:
            return
        losses = torch.stack([loss for _, loss, _ in pending]).tolist()
        qs = [q for _, _, q in pending if q is not None]
        qs = iter(torch.stack(qs).tolist() if qs else [])
        for (row, _, q), loss in zip(pending, losses):
            row.update(loss=loss, importance=next(qs) if q is not None else float("nan"))
        pending.clear()

    def checkpoint(step: int) -> None:
        if ckpt is None or model.rank != 0:  # data parallel: rank 0 writes for all
            return
        flush_history()
        _save(
            ckpt,
            dict(
                step=step,
                params={k: v.detach().cpu() for k, v in trainable.items()},
                optimizer=opt.state_dict(),
                scheduler=sched.state_dict(),
                sampler=sampler.state_dict(),
                rng=torch.get_rng_state(),
                history=result.history,
                snapshots=result.snapshots,
                elapsed_s=elapsed_before + time.monotonic() - t0,
            ),
        )

    use_amp = device.type == "cuda"
    t0 = time.monotonic()
    last_ckpt = t0
    bar = tqdm(total=total, initial=start, disable=not progress, desc="train", mininterval=5)
    step = start
    epoch = start // steps_per_epoch
    while step < total:
        batches = _epoch_batches(n, cfg.batch_size, cfg.seed, epoch)[step - epoch * steps_per_epoch :]
        for batch in iterate_batches(data, batches, cfg.num_workers, pin=use_amp, seed=cfg.seed, epoch=epoch):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            sid = sampler.sample(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model.loss(batch, sid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            model.reduce_grads(sid)  # data parallel: average the stitch's grads over ranks first
            theta = model.importance_params(sid)
            q = snip_importance(theta) if theta else None  # a 0-dim tensor on the device, not synced
            sampler.update(sid, float("nan") if q is None else q, step, loss=loss.detach())
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            row = dict(step=step, stitch_id=sid, loss=None, importance=None, lr=lr)
            result.history.append(row)
            pending.append((row, loss.detach(), q))
            step += 1
            if step in snapshot_at:
                result.snapshots[step] = {k: v.detach().cpu().clone() for k, v in trainable.items()}
            bar.update(1)
            if time.monotonic() - last_ckpt >= cfg.checkpoint_every_s:
                checkpoint(step)
                last_ckpt = time.monotonic()
        else:
            epoch += 1
            continue
        break  # stop_after reached
    bar.close()
    checkpoint(step)
    flush_history()
    result.wall_s_segment = time.monotonic() - t0
    result.wall_s = elapsed_before + result.wall_s_segment
    return result
