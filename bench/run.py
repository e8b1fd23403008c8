"""Performance benchmarks: ESTA's PST against SN-Net's full fine-tuning on ViT-Ti/S/B.

Every model is the paper's shape (224 px, patch 16, depth 12, widths 192/384/768) with random
initialisation (``esta.vit.anchors.build_family("vit-ti-s-b", num_classes=100)``), stitched with
``esta.vit.stitch.StitchedViT``; nothing is loaded from disk and stitching layers keep their default
init (least squares does not change the cost). What is measured, and how:

1. Training step, PST vs full (stitch 56 = ViT-S -> ViT-B (6,7), 10.0 GMACs, mid-depth), same batch.
   A step is the one of ``esta.train``: forward, zero_grad, backward, SNIP importance, AdamW step.
   Before timing, every trainable parameter is given AdamW state (one step on zero gradients), as
   in steady-state training where every stitch has been sampled; then warm-up steps on the stitch.
   - ``pst_vs_full_step_time``: median over paired, interleaved repeats of t(PST) / t(full).
   - ``pst_vs_full_step_flops``: FLOPs of forward + backward counted by ``FlopCounterMode`` on the
     meta device (attention unfused so its matmuls are seen). Informational: PST freezes weights,
     so the weight-gradient matmuls (one third of a step) are skipped, but activation gradients
     still flow back through every block to reach the LoRA and bias parameters of early blocks,
     so the floor is ~2/3 (forward + input gradients over forward + input + weight gradients).
   - ``pst_vs_full_step_memory``: on CUDA, ``torch.cuda.max_memory_allocated`` over one step with
     only that model on the device. On CPU (no allocator statistics) it is the sum of: bytes of
     every parameter of the model, the gradients present after backward, the AdamW state
     (exp_avg, exp_avg_sq, step), and the tensors autograd saves for backward (counted with
     ``torch.autograd.graph.saved_tensors_hooks``, de-duplicated by storage, parameters excluded).
     At batch 4 parameters and AdamW state dominate; ``pst_vs_full_step_memory_b64`` (CPU,
     informational) repeats the count at the paper's batch 64, where saved activations dominate:
     PST still saves what activation gradients need (attention q/k/v/out, GELU inputs, LayerNorm
     inputs, LoRA inputs) and drops only the inputs kept for weight gradients.
2. Forward overhead (eval, no_grad): ``anchor_id_vs_timm_time`` runs stitch ids 0, 1, 2 against
   the three timm anchors' own ``forward``; ``stitch_vs_parts_time`` runs stitch 56 against its
   parts called directly (front embed + blocks[:7], stitching linear, end blocks[7:] + norm + head).
   Outputs are checked equal before timing; a mismatch raises and the script exits non-zero.
3. Evaluating all 71 stitches of the SN-Net model (shared parameters) on one batch with each front
   anchor's prefix computed once (``esta.vit.evaluate.predict``) vs one forward per stitch.
   ``all_stitches_prefix_flops``: FLOPs counted on the meta device over all 71 stitches, printed
   beside the analytic minimum from ``esta.vit.stitch.anchor_costs`` (each front anchor's stem and
   blocks up to its deepest cut run once). ``all_stitches_prefix_time``: median paired time ratio.
   The logits of the two ways are checked equal.
4. ``stitch_flops_table_time``: seconds to build the 71-row MACs/params table from scratch
   (``esta.info.stitch_table``: meta-device family + ``stitch_costs``), first thing in the process.
5. ``train_mfu_<device>``: FLOP/s of the PST step of 1 (FLOPs counted as in 1, optimizer not
   counted) over the FLOP/s of a square matmul probe (fp32 2048 on CPU, bf16 8192 on CUDA); the
   step and the probe are raced against each other, the median of the per-repeat ratios taken.

Timing: ``time.perf_counter`` around each call (CUDA synchronised), warm-up calls first (the
correctness checks are the warm-up of 2 and 3), A and B alternated ABBA so drift cancels; a ratio
is the median of the per-repeat ratios. A race stops repeating once it has run ``budget_s`` (60 s
on CPU), so that a loaded machine stretches the run less (about 3 minutes idle); the notes say how
many repeats ran. Torch uses every core (``--threads``). Beside each timing the script prints the share
of CPU that other processes took meanwhile (from /proc/stat): on a shared 2-core box even one busy
neighbour makes the two OpenMP threads wait on each other, and timings then mean little. CPU
batches: 4 (training), 8 (forwards), 1 (all stitches). On CUDA (batch 64) the steps and forwards
run under bf16 autocast, as ``esta.train`` and ``esta.vit.evaluate`` do.
Writes ``results.csv`` (benchmark,value,target,unit,met), rows with target "-" informational, and
a sibling ``machine.json`` (machine, settings, checks passed, per-row notes).

    python bench/run.py [--quick] [--device cpu|cuda|auto] [--threads N] [--out bench/results.csv]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from esta.vit.tuning import TuningConfig, TunableViT, make_tunable
from esta.vit.anchors import build_family, meta_family
from esta.vit.evaluate import predict
from esta.info import stitch_table
from esta.runtime import write_json
from esta.sampling import snip_importance
from esta.vit.stitch import StitchedViT, anchor_costs, stitch_costs

FAMILY = "vit-ti-s-b"
NUM_CLASSES = 100
IMG = 224
N_STITCHES = 71
STITCH = 56  # ViT-S -> ViT-B (6, 7): mid-depth, 10.0 GMACs between ViT-S (4.6) and ViT-B (17.6)
COLUMNS = ["benchmark", "value", "target", "unit", "met"]


@dataclass(frozen=True)
class Settings:
    """Batch sizes and repeat counts of one run."""

    train_batch: int  # benchmark 1 and 5
    train_warmup: int
    train_reps: int
    eval_batch: int  # benchmark 2
    eval_reps: int
    all_batch: int  # benchmark 3
    all_reps: int
    all_timed: tuple[int, ...] | None  # stitch ids timed in 3 (None: all 71)
    mm_size: int  # benchmark 5: square matmul of the probe
    mm_count: int  # matmuls per probe call (about as long as a training step)
    budget_s: float  # a race stops repeating once it has run this long (after one repeat at least)
    memory_batches: tuple[int, ...] = ()  # further batches of the memory measure (informational)


CPU = Settings(
    train_batch=4, train_warmup=2, train_reps=9, eval_batch=8, eval_reps=9,
    all_batch=1, all_reps=3, all_timed=None, mm_size=2048, mm_count=8, budget_s=60, memory_batches=(64,),
)
CUDA = Settings(
    train_batch=64, train_warmup=3, train_reps=10, eval_batch=64, eval_reps=10,
    all_batch=64, all_reps=5, all_timed=None, mm_size=8192, mm_count=20, budget_s=60,
)
# --quick (tests): ViT-Ti and its first eight stitches into ViT-S (one shared prefix) in benchmark 3
QUICK = dict(
    train_warmup=1, train_reps=2, eval_reps=2, all_reps=1, all_timed=(0, *range(3, 11)), budget_s=20,
    memory_batches=(),
)
SETTINGS = {
    ("cpu", False): CPU,
    ("cpu", True): replace(CPU, train_batch=1, eval_batch=1, all_batch=1, mm_size=1024, mm_count=4, **QUICK),
    ("cuda", False): CUDA,
    ("cuda", True): replace(CUDA, train_batch=8, eval_batch=8, all_batch=8, mm_count=5, **QUICK),
}


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
    with torch.device("meta"):
        return make_tunable(unfuse_attention(StitchedViT(meta_family(FAMILY, NUM_CLASSES))), cfg)


def images(batch: int, device: torch.device | str, seed: int = 0) -> torch.Tensor:
    if torch.device(device).type == "meta":
        return torch.empty(batch, 3, IMG, IMG, device="meta")
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMG, IMG, generator=gen).to(device)


def labels(batch: int, device: torch.device | str) -> torch.Tensor:
    return (torch.arange(batch) % NUM_CLASSES).to(device)


# ---------------------------------------------------------------------------------------------
# 4. Per-stitch FLOPs table


def bench_table() -> list[Row]:
    t0 = time.perf_counter()
    table = stitch_table(FAMILY, NUM_CLASSES)
    seconds = time.perf_counter() - t0
    if len(table) != N_STITCHES:
        raise MismatchError(f"stitch table has {len(table)} rows, expected {N_STITCHES}")
    return [row("stitch_flops_table_time", seconds, "< 10", "s", f"{len(table)} stitches")]


# ---------------------------------------------------------------------------------------------
# 2. Forward overhead of the stitched model


def stitch_by_parts(net: StitchedViT, stitch_id: int):
    """Stitch ``stitch_id`` written out with the timm modules themselves."""
    s = net.stitch(stitch_id)
    front, end, layer = net.anchors[s.front], net.anchors[s.end], net.stitch_layer(s)

    def run(x: torch.Tensor) -> torch.Tensor:
        h = front.norm_pre(front.patch_drop(front._pos_embed(front.patch_embed(x))))
        for blk in front.blocks[: s.j + 1]:
            h = blk(h)
        h = layer(h)
        for blk in end.blocks[s.k :]:
            h = blk(h)
        return end.forward_head(end.norm(h))

    return run


@torch.no_grad()
def bench_forward(net: StitchedViT, st: Settings, device: torch.device, checks: list[str]) -> list[Row]:
    net.eval()
    x = images(st.eval_batch, device)
    anchors = list(net.anchors)
    n = len(anchors)

    def stitched_anchors():
        with autocast(device):
            return [net(x, i) for i in range(n)]

    def timm_anchors():
        with autocast(device):
            return [vit(x) for vit in anchors]

    parts = stitch_by_parts(net, STITCH)

    def stitched():
        with autocast(device):
            return net(x, STITCH)

    def by_parts():
        with autocast(device):
            return parts(x)

    tol = tolerance(device)
    for i, (got, want) in enumerate(zip(stitched_anchors(), timm_anchors())):
        check_same(f"stitch id {i} vs timm anchor {i}", got, want, **tol)
    checks.append("anchor_ids_equal_timm")
    check_same(f"stitch {STITCH} vs its parts", stitched(), by_parts(), **tol)
    checks.append("stitch_equals_parts")

    # the checks above were the warm-up calls
    anchor = race(stitched_anchors, timm_anchors, st.eval_reps, 0, device, st.budget_s)
    stitch = race(stitched, by_parts, st.eval_reps, 0, device, st.budget_s)
    batch = f"batch {st.eval_batch}"
    anchor_note = f"ids 0-{n - 1} {anchor.med('a'):.3f} s, timm {anchor.med('b'):.3f} s, {batch}{anchor.noise}"
    stitch_note = f"id {STITCH} {stitch.med('a'):.3f} s, parts {stitch.med('b'):.3f} s, {batch}{stitch.noise}"
    return [
        row("anchor_id_vs_timm_time", anchor.ratio, "<= 1.05", "ratio", anchor_note),
        row("stitch_vs_parts_time", stitch.ratio, "<= 1.05", "ratio", stitch_note),
    ]


# ---------------------------------------------------------------------------------------------
# 3. All stitches with prefix reuse


def prefix_floor() -> float:
    """MACs of evaluating every stitch with each front anchor's stem and blocks up to its deepest
    cut run once, over the MACs of one full forward per stitch (from esta's per-block costs)."""
    anchors = meta_family(FAMILY, NUM_CLASSES)
    costs = [anchor_costs(a) for a in anchors]
    table = stitch_costs(anchors)
    depth = len(costs[0].block_macs)
    shared = 0  # prefix MACs that reuse saves
    for front, rows in table.groupby("front"):
        c = costs[front]
        cuts = [depth - 1 if r.front == r.end else r.j for r in rows.itertuples()]
        prefixes = [c.stem_macs + sum(c.block_macs[: cut + 1]) for cut in cuts]
        shared += sum(prefixes) - max(prefixes)
    total = table["macs"].sum()
    return (total - shared) / total


def bench_all_stitches(model: TunableViT, st: Settings, device: torch.device, checks: list[str]) -> list[Row]:
    if not model.shares_prefix:
        raise ValueError("prefix reuse needs a model whose stitches share parameters (SN-Net)")
    ids = list(range(model.net.num_stitches))

    meta = meta_model(TuningConfig(mode="full")).eval()
    xm = images(1, "meta")
    with torch.no_grad():
        flops_reuse = count_flops(lambda: predict(meta, xm, ids))
        flops_each = count_flops(lambda: [meta(xm, sid) for sid in ids])
    flops_ratio = flops_reuse / flops_each
    floor = prefix_floor()

    model.eval()
    timed_ids = ids if st.all_timed is None else list(st.all_timed)
    x = images(st.all_batch, device)

    def reuse():
        with autocast(device):
            return predict(model, x, timed_ids)

    @torch.no_grad()
    def each():
        with autocast(device):
            return {sid: model(x, sid) for sid in timed_ids}

    got, want = reuse(), each()
    check_same("prefix-reuse logits vs one forward per stitch", got, want, **tolerance(device))
    for sid in timed_ids:
        if not torch.equal(got[sid].argmax(-1), want[sid].argmax(-1)):
            raise MismatchError(f"stitch {sid}: predictions differ between prefix reuse and its own forward")
    checks.append("prefix_predictions_equal")

    pair = race(reuse, each, st.all_reps, 0, device, st.budget_s)  # the check was the warm-up
    flops_note = f"{flops_reuse / 2e9:.1f} vs {flops_each / 2e9:.1f} GMACs per image; analytic minimum {floor:.4f}"
    time_note = (
        f"reuse {pair.med('a'):.2f} s, one forward each {pair.med('b'):.2f} s "
        f"({len(timed_ids)} stitches, batch {st.all_batch}){pair.noise}"
    )
    return [
        row("all_stitches_prefix_flops", flops_ratio, "<= 0.85", "ratio", flops_note),
        row("all_stitches_prefix_flops_min", floor, "-", "ratio", "analytic, from esta per-block MACs"),
        row("all_stitches_prefix_time", pair.ratio, "<= 0.9", "ratio", time_note),
    ]


# ---------------------------------------------------------------------------------------------
# 1 and 5. Training step: PST vs full fine-tuning, and throughput


@dataclass
class Trainer:
    """One method's model, AdamW and the fixed batch of the benchmark step."""

    name: str
    model: TunableViT
    opt: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device

    def loss(self) -> torch.Tensor:
        with autocast(self.device):
            return F.cross_entropy(self.model(self.x, STITCH), self.y)

    def step(self) -> None:
        """One step of ``esta.train.train``: forward, zero_grad, backward, importance, AdamW."""
        loss = self.loss()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        snip_importance(self.model.importance_params(STITCH))
        self.opt.step()

    def fill_state(self) -> None:
        """Give every trainable parameter AdamW state, as once every stitch has been sampled."""
        for p in self.model.trainable().values():
            p.grad = torch.zeros_like(p)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def with_batch(self, batch: int) -> Trainer:
        """The same model and optimizer on a batch of another size."""
        return replace(self, x=images(batch, self.device), y=labels(batch, self.device))

    def to(self, device: torch.device) -> Trainer:
        """Move model and optimizer state (keeping AdamW's step counts where they live)."""
        self.model.to(device)
        for state in self.opt.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and key != "step":
                    state[key] = value.to(device)
        self.x, self.y = self.x.to(device), self.y.to(device)
        return self

    def saved_forward(self) -> tuple[torch.Tensor, int]:
        """The loss, and the bytes autograd saved for backward while computing it (storages
        de-duplicated; parameters excluded, they are counted once on their own)."""
        params = {p.untyped_storage().data_ptr() for p in self.model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.loss()
        return loss, sum(saved.values())

    def memory(self) -> dict[str, int]:
        """Bytes of one step: CUDA peak, or on CPU the parts listed in the module docstring."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.step()
            sync(self.device)
            return dict(total=torch.cuda.max_memory_allocated(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss, saved = self.saved_forward()
        loss.backward()
        out = dict(
            params=sum(p.nbytes for p in self.model.parameters()),
            grads=sum(p.grad.nbytes for p in self.model.parameters() if p.grad is not None),
            adamw=sum(v.nbytes for s in self.opt.state.values() for v in s.values() if torch.is_tensor(v)),
            saved=saved,
        )
        self.opt.zero_grad(set_to_none=True)
        out["total"] = sum(out.values())
        return out


def make_trainer(cfg: TuningConfig, st: Settings, device: torch.device) -> Trainer:
    model = make_tunable(StitchedViT(build_family(FAMILY, NUM_CLASSES)), cfg).to(device).train()
    # esta's recipe: AdamW lr 1e-3, wd 1e-4; SN-Net's anchors at 1e-4 (spec §8)
    lr_anchor = 1e-4 if cfg.mode == "full" else None
    opt = torch.optim.AdamW(model.param_groups(1e-3, lr_anchor, 1e-4))
    return Trainer(cfg.mode, model, opt, images(st.train_batch, device), labels(st.train_batch, device), device)


def step_flops(cfg: TuningConfig, batch: int) -> int:
    """FLOPs of forward + backward of one step (optimizer excluded), counted on the meta device."""
    model = meta_model(cfg).train()
    x, y = images(batch, "meta"), labels(batch, "meta")
    return count_flops(lambda: F.cross_entropy(model(x, STITCH), y).backward())


def matmul_probe(device: torch.device, n: int, count: int):
    """A call of ``count`` n x n matmuls (fp32 on CPU, bf16 on CUDA) and its FLOPs: the achievable
    FLOP/s that utilisation is measured against."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def probe() -> None:
        for _ in range(count):
            a @ b

    return probe, 2 * n**3 * count


def bench_training(st: Settings, device: torch.device) -> list[Row]:
    cfgs = dict(pst=TuningConfig(mode="pst"), full=TuningConfig(mode="full"))
    flops = {name: step_flops(cfg, st.train_batch) for name, cfg in cfgs.items()}

    # Memory first, one model on the device at a time (matters for the CUDA peak).
    trainers, memory = {}, {}
    memory_at = {b: {} for b in st.memory_batches}
    for name, cfg in cfgs.items():
        tr = make_trainer(cfg, st, device)
        tr.fill_state()
        if device.type == "cuda":
            tr.step()  # keep one-off allocations (cuBLAS workspace) out of the measured peak
        memory[name] = tr.memory()
        for b in st.memory_batches:  # the batch changes only the saved activations: forward only
            mem = dict(memory[name], saved=tr.with_batch(b).saved_forward()[1])
            memory_at[b][name] = dict(mem, total=mem["total"] - memory[name]["saved"] + mem["saved"])
        trainers[name] = tr.to(torch.device("cpu")) if device.type == "cuda" else tr
    pst, full = (trainers[n].to(device) for n in ("pst", "full"))

    steps = race(pst.step, full.step, st.train_reps, st.train_warmup, device, st.budget_s)
    del trainers, full

    # Utilisation: the PST step raced against the matmul probe, so both see the same machine.
    probe, probe_flops = matmul_probe(device, st.mm_size, st.mm_count)
    util = race(pst.step, probe, st.train_reps, 1, device, st.budget_s)
    mfu = statistics.median((flops["pst"] / a) / (probe_flops / b) for a, b in zip(util.a, util.b))
    step_rate, probe_rate = flops["pst"] / util.med("a"), probe_flops / util.med("b")

    t_pst, t_full, batch = steps.med("a"), steps.med("b"), st.train_batch
    where = f"stitch {STITCH}, batch {batch}"

    def memory_row(name: str, mem: dict, target: str, note: str) -> Row:
        mib = {n: ", ".join(f"{k} {v / 2**20:.0f}" for k, v in m.items()) for n, m in mem.items()}
        ratio = mem["pst"]["total"] / mem["full"]["total"]
        return row(name, ratio, target, "ratio", f"{note}; MiB PST [{mib['pst']}] full [{mib['full']}]")

    return [
        row("pst_vs_full_step_time", steps.ratio, "<= 0.75", "ratio",
            f"PST {t_pst:.3f} s, full {t_full:.3f} s, {where}{steps.noise}"),
        row("pst_vs_full_step_flops", flops["pst"] / flops["full"], "~0.67", "ratio",
            f"PST {flops['pst'] / 1e9:.1f} vs full {flops['full'] / 1e9:.1f} GFLOP fwd+bwd, {where}; "
            "weight-gradient matmuls skipped, activation gradients still flow",
            met=flops["pst"] / flops["full"] >= 0.6),
        memory_row("pst_vs_full_step_memory", memory, "<= 0.5", where),
        *(memory_row(f"pst_vs_full_step_memory_b{b}", m, "-", f"stitch {STITCH}, batch {b}")
          for b, m in memory_at.items()),
        row(f"train_mfu_{device.type}", mfu, ">= 0.40", "fraction",
            f"PST step {step_rate / 1e9:.1f} GFLOP/s vs matmul {probe_rate / 1e9:.1f}, {where}; "
            f"{len(util.a)} reps{util.others_note}"),
        row("pst_step_time", t_pst, "-", "s", where),
        row("full_step_time", t_full, "-", "s", where),
        row("pst_train_images_per_s", batch / t_pst, "-", "images/s", where),
        row("matmul_probe_gflops", probe_rate / 1e9, "-", "GFLOP/s", f"{st.mm_size}^3 matmuls"),
    ]


# ---------------------------------------------------------------------------------------------
# Run


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        python=platform.python_version(),
        torch=torch.__version__,
        timm=version("timm"),
        peft=version("peft"),
    )


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for r in rows:
            writer.writerow([r.benchmark, f"{r.value:.6g}", r.target, r.unit, str(r.met).lower()])
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats (tests)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results.csv")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: every core; fewer suits a shared machine's tests)")
    args = parser.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    st = SETTINGS[(device.type, args.quick)]
    info = machine_info(device)
    load_start = os.getloadavg()
    print(f"# {info['device_name']}, {info['cores']} cores, torch {info['torch']}, device {device}, "
          f"{args.threads} threads, load {load_start[0]:.2f}{', quick' if args.quick else ''}", flush=True)

    t0 = time.perf_counter()
    checks: list[str] = []
    rows: list[Row] = []

    def report(new: list[Row]) -> None:
        for r in new:
            status = "-" if r.target == "-" else ("met" if r.met else "MISSED")
            print(f"{r.benchmark:30s} {r.value:10.4g} {r.unit:9s} target {r.target:8s} {status:6s} {r.note}")
        print(f"#   ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
        rows.extend(new)

    report(bench_table())  # first: the table is timed from scratch
    net = StitchedViT(build_family(FAMILY, NUM_CLASSES)).to(device)
    report(bench_forward(net, st, device, checks))
    report(bench_all_stitches(make_tunable(net, TuningConfig(mode="full")), st, device, checks))
    del net
    report(bench_training(st, device))

    wall = time.perf_counter() - t0
    write_csv(rows, args.out)
    run = dict(
        quick=args.quick,
        settings=asdict(st),
        stitch=STITCH,
        checks_passed=checks,
        wall_s=round(wall, 1),
        loadavg_start=load_start,
        loadavg_end=os.getloadavg(),
        notes={r.benchmark: r.note for r in rows},
    )
    write_json(args.out.with_name("machine.json"), dict(machine=info, run=run))
    print(f"# {len(rows)} rows -> {args.out} in {wall:.0f} s; load {os.getloadavg()[0]:.2f}; checks: {checks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
