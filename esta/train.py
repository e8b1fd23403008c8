"""The one training loop for both methods (ESTA §3, spec §5-§7).

Each step samples one stitch, runs the batch through it, backpropagates, records the stitch's
SNIP importance and takes an AdamW step (cosine schedule with linear warm-up). ESTA and SN-Net
differ only in the model's trainable set (``esta.vit.tuning``) and the sampler (``esta.sampling``).

Training is resumable: trainable parameters, optimizer, sampler and RNG state are saved every
``checkpoint_every_s`` seconds and at the end to ``<ckpt_dir>/<settings hash>.pt`` (only the latest
is kept, written atomically), and a run resumes from it only when the hash of its settings matches.
The data order of every epoch is a function of (seed, epoch), so a resumed run replays exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from esta.sampling import StitchSampler, snip_importance

__all__ = ["TrainConfig", "TrainResult", "train", "settings_hash", "pick_device", "iterate_batches",
           "clear_checkpoints"]


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
    wall_s: float = 0.0
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


def iterate_batches(data: Dataset, batches: list[list[int]], num_workers: int, pin: bool):
    """Batches in the given order; in-memory tensors are indexed directly (no per-sample collate)."""
    if isinstance(data, TensorDataset):
        for idx in batches:
            yield tuple(t[idx] for t in data.tensors)
    else:
        yield from DataLoader(data, batch_sampler=batches, num_workers=num_workers, pin_memory=pin)


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
    model: torch.nn.Module,
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

    ``model`` is any family's tunable stitched model: ``model.loss(batch, stitch_id)`` gives the
    training loss of a batch (a tuple of tensors, as the data set yields them),
    ``model.importance_params(stitch_id)`` the stitch's Θ_s, and ``model.trainable()`` /
    ``model.param_groups(...)`` what the optimizer steps.

    ``settings`` is everything that determines the run (config slices, input checksums); its hash
    names the checkpoint. ``stop_after`` ends the run after that many steps (tests of resume).
    ``snapshot_at``: step counts after which a copy of the trainable state is kept in
    ``result.snapshots`` (and in the checkpoint, so a resumed run keeps them).
    """
    device = torch.device(device)
    model.to(device).train()
    n = len(data)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.total_steps(n)
    if sampler.total_steps != total:
        raise ValueError(f"sampler was built for {sampler.total_steps} steps, training runs {total}")
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    opt = torch.optim.AdamW(model.param_groups(cfg.lr, cfg.lr_anchor, cfg.weight_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, warmup))
    trainable = model.trainable()
    result = TrainResult(steps=total)

    ckpt = None
    if ckpt_dir is not None:
        ckpt = Path(ckpt_dir) / f"{settings_hash(dict(settings or {}, train=cfg.to_dict()))}.pt"
    start = 0
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

    def checkpoint(step: int) -> None:
        if ckpt is None:
            return
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
        for batch in iterate_batches(data, batches, cfg.num_workers, pin=use_amp):
            if step >= total or (stop_after is not None and step >= stop_after):
                break
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            sid = sampler.sample(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = model.loss(batch, sid)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            q = snip_importance(model.importance_params(sid))
            sampler.update(sid, q, step)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            result.history.append(dict(step=step, stitch_id=sid, loss=loss.item(), importance=q, lr=lr))
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
    result.wall_s = time.monotonic() - t0
    return result
