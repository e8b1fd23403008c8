"""Shared pieces of the benchmarks in ``bench/``: the benchmarked model, settings, result rows, and
the tools -- paired ABBA timing with a time budget, FLOP counting, output checks.

Every model is the paper's shape (224 px, patch 16, depth 12, widths 192/384/768) with random
initialisation (``esta.vit.anchors.build_family("vit-ti-s-b", num_classes=100)``), stitched with
``esta.vit.stitch.StitchedViT``; nothing is loaded from disk and stitching layers keep their default
init (least squares does not change the cost).

Timing: ``time.perf_counter`` around each call (CUDA synchronised), warm-up calls first, A and B
alternated ABBA so drift cancels; a ratio is the median of the per-repeat ratios. A race stops
repeating once it has run ``budget_s``; beside each timing the share of CPU that other processes
took meanwhile (from /proc/stat) is reported: on a shared 2-core box even one busy neighbour makes
the two OpenMP threads wait on each other, and timings then mean little.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from esta.vit.info import meta_stitched
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TunableViT, TuningConfig

FAMILY = "vit-ti-s-b"
NUM_CLASSES = 100
IMG = 224
N_STITCHES = 71
STITCH = 56  # ViT-S -> ViT-B (6, 7): mid-depth, 10.0 GMACs between ViT-S (4.6) and ViT-B (17.6)


@dataclass(frozen=True)
class Settings:
    """Batch sizes and repeat counts of one run."""

    train_batch: int  # training step benchmarks
    train_warmup: int
    train_reps: int
    eval_batch: int  # forward overhead
    eval_reps: int
    all_batch: int  # all stitches with prefix reuse
    all_reps: int
    all_timed: tuple[int, ...] | None  # stitch ids timed there (None: all 71)
    mm_size: int  # utilisation: square matmul of the probe
    mm_count: int  # matmuls per probe call (about as long as a training step)
    budget_s: float  # a race stops repeating once it has run this long (after one repeat at least)
    memory_batches: tuple[int, ...] = ()  # further batches of the memory measure (informational)
    ckpt_batch: int = 64  # batch of the gradient-checkpointing memory measure


@dataclass
class Row:
    """One line of results.csv; ``note`` (details, noise) is printed and kept in machine.json."""

    benchmark: str
    value: float
    target: str
    unit: str
    met: bool
    note: str = ""


def row(benchmark: str, value: float, target: str, unit: str, note: str = "", met: bool | None = None) -> Row:
    """A result; unless given, ``met`` follows from a target "<= x", ">= x" or "< x" ("-": informational)."""
    if met is None:
        if target == "-":
            met = True
        else:
            op, bound = target.split()
            met = {"<=": value <= float(bound), ">=": value >= float(bound), "<": value < float(bound)}[op]
    return Row(benchmark, value, target, unit, met, note)


class MismatchError(AssertionError):
    """Two ways of computing the same thing disagree: timings would be meaningless."""


# ---------------------------------------------------------------------------------------------
# Tools: timing, FLOPs, checks


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def busy_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy (Linux /proc/stat), else None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pair:
    """Paired timings of A and B; ``ratio`` is the median of the per-repeat ratios A/B.
    ``others`` is the share of the machine's CPU that other processes used meanwhile (noise)."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    others: float | None = None

    @property
    def ratio(self) -> float:
        return statistics.median(x / y for x, y in zip(self.a, self.b))

    def med(self, which: str) -> float:
        return statistics.median(getattr(self, which))

    @property
    def noise(self) -> str:
        """Repeats, the ratio of the fastest calls (less sensitive to neighbours), others' CPU share."""
        out = f"; {len(self.a)} reps, min/min {min(self.a) / min(self.b):.3f}"
        return out if self.others is None else f"{out}, other processes {self.others:.0%} CPU"

    @property
    def others_note(self) -> str:
        return "" if self.others is None else f"; other processes {self.others:.0%} CPU"


def race(a, b, reps: int, warmup: int, device: torch.device, budget_s: float = math.inf) -> Pair:
    """Time ``a`` and ``b`` side by side: ``warmup`` untimed calls each, then ``reps`` timed
    calls each in ABBA order so that slow drift of the machine hits both alike. Stops early,
    after one repeat at least, once the timed calls have taken ``budget_s`` seconds."""
    for _ in range(warmup):
        a()
        b()
    pair = Pair()
    busy0, ours0, wall0 = busy_seconds(), time.process_time(), time.perf_counter()
    for r in range(reps):
        if r > 0 and time.perf_counter() - wall0 > budget_s:
            break
        if r % 2 == 0:
            pair.a.append(timed(a, device))
            pair.b.append(timed(b, device))
        else:
            pair.b.append(timed(b, device))
            pair.a.append(timed(a, device))
    if busy0 is not None and device.type == "cpu":
        others = busy_seconds() - busy0 - (time.process_time() - ours0)
        pair.others = max(0.0, others / ((time.perf_counter() - wall0) * (os.cpu_count() or 1)))
    return pair


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter`` counts them (2 per multiply-accumulate)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def check_same(what: str, got, want, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raise ``MismatchError`` unless ``got`` and ``want`` (tensors, or dicts of tensors) agree."""
    if isinstance(want, dict):
        if not isinstance(got, dict) or got.keys() != want.keys():
            raise MismatchError(f"{what}: different keys")
        for key in want:
            check_same(f"{what}[{key}]", got[key], want[key], rtol, atol)
        return
    if got.shape != want.shape:
        raise MismatchError(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    if not torch.allclose(got.float(), want.float(), rtol=rtol, atol=atol):
        err = (got.float() - want.float()).abs().max().item()
        raise MismatchError(f"{what}: outputs differ (max abs difference {err:.3g})")


def autocast(device: torch.device):
    """bf16 autocast on CUDA, as esta's training and evaluation use; nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def tolerance(device: torch.device) -> dict:
    return dict(rtol=1e-4, atol=1e-5) if device.type == "cpu" else dict(rtol=2e-2, atol=2e-2)


def unfuse_attention(net: StitchedViT) -> StitchedViT:
    """Make attention run as explicit matmuls so ``FlopCounterMode`` sees them (spec §3)."""
    for anchor in net.anchors:
        for blk in anchor.blocks:
            blk.attn.fused_attn = False
    return net


def meta_model(cfg: TuningConfig) -> TunableViT:
    """The adapted family on the meta device, attention unfused: shapes only, for FLOP counts."""
    model = meta_stitched(FAMILY, NUM_CLASSES, cfg)
    unfuse_attention(model.net)
    return model


def images(batch: int, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    if torch.device(device).type == "meta":
        return torch.empty(batch, 3, IMG, IMG, device="meta")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMG, IMG, generator=gen).to(device)


def labels(batch: int, device: torch.device | str) -> torch.Tensor:
    return (torch.arange(batch) % NUM_CLASSES).to(device)

