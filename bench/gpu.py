"""GPU benchmark (issue 25): one prepared run for a lent GPU that writes everything it measures to a folder.

1. ViT at the paper's shape (224 px, ViT-Ti/S/B random init, stitch 56, batch 64, bf16 autocast, TF32),
   with ``bench.training``'s trainers (forward, backward, SNIP importance, AdamW; AdamW state for every
   trainable parameter first):
   - ``vit_pst_vs_full_step_time[_ckpt]``: ESTA's PST step over SN-Net's full fine-tuning step, median of
     paired ABBA repeats, without and with gradient checkpointing (``set_grad_checkpointing``);
     ``vit_{pst,full}_step_time[_ckpt]`` the medians themselves.
   - ``vit_pst_vs_full_step_memory[_ckpt]`` and ``vit_{pst,full}_step_memory[_ckpt]``: peak of a step,
     ``torch.cuda.max_memory_allocated`` with one model on the GPU (``bench.checkpointing.checkpoint_memory``;
     on the CPU its byte count: parameters, gradients, AdamW state, tensors held for backward).
   - ``vit_pst_step_mfu_probe`` / ``vit_pst_step_mfu_peak``: FLOP/s of the PST step (``FlopCounterMode``
     on the meta device, optimizer not counted) over a bf16 8192^3 matmul probe raced against it in this
     process, and over the card's dense bf16 peak (``PEAK_BF16_TFLOPS``; NaN for a card not in it).
   - ``vit_all_stitches_*``: all 71 stitches of SN-Net's model evaluated with each front anchor's prefix
     computed once (``bench.forward.bench_all_stitches``: FLOPs, time vs one forward per stitch), and
     ``vit_all_stitches_reuse_time`` the seconds that takes for one batch.
2. Stitched LLaMA 7B -> 13B (``esta.llm.anchors`` family ``llama-7b-13b``, random bf16 weights built on
   the GPU, ``StitchedLlama(checkpointing=True)`` + PST as llama.yaml's ``llm.pst``), the stitch whose size
   is nearest the anchors' mean (id 17: 16 + 20 layers, 9.90 B params), config/llama.yaml's batch and
   sequence length, bf16 autocast, trainable tensors in fp32 (esta.llm's precision policy):
   ``llama_step_time``, ``llama_tokens_per_s``,
   ``llama_step_memory`` (peak, GB; target: fits an 80 GB card), MFU (model FLOPs: the recomputation of
   checkpointed layers is not counted) against the probe and the peak, and ``llama_max_batch``: the batch
   doubled until ``torch.cuda.OutOfMemoryError`` (bounded tries and seconds), the last that fit.
3. The workflow's GPU path: Snakemake on config/smoke.yaml with ``device: cuda`` to one task's deployed
   table (ESTA, first task and seed), whose rows must record device ``cuda``. Skipped, with a note, where
   Snakemake is not installed.

``--dry`` runs the same code on the CPU: the ViT part at bench/run.py ``--quick``'s CPU settings (batch 1,
no warm-up, one timed repeat, four stitches timed), the tiny LLaMA pair in fp32 without autocast at
batch 2 x 64 tokens, and only ``snakemake -n`` of part 3 (``workflow_dry_jobs``). A CPU has no allocator
peak and no bf16 peak: the LLaMA memory rows and the MFU against the peak are NaN there.

Writes ``OUT_DIR/gpu.csv`` (benchmark,value,target,unit,met, as bench/run.py), ``OUT_DIR/gpu.json``
(device, driver, versions, settings, per-row notes, per-part status and wall time), ``workflow.log`` and,
after a real workflow run, its ``workflow_test_accuracy.csv``. The CSV and JSON are rewritten after each
part, so that a run cut short keeps what it measured; a part that raises is recorded with its traceback
and the other parts still run, and the exit status is then 1. Every part is bounded (repeats, time
budgets, the workflow's timeout), sized to finish within 7 minutes on an H100 (an estimate: not yet run on one).

    bash bench/gpu.sh [--dry] OUT_DIR
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from pathlib import Path

import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/gpu.py` puts bench/ first; the modules import as bench.*

from bench.checkpointing import checkpoint_memory  # noqa: E402
from bench.common import STITCH, Row, Settings, autocast, count_flops, images, race, row, sync, timed  # noqa: E402
from bench.forward import bench_all_stitches  # noqa: E402
from bench.run import CUDA, SETTINGS, machine_info, write_csv  # noqa: E402
from bench.training import fill_adamw_state, make_trainer, matmul_probe, optimizer_step, step_flops  # noqa: E402
from esta.llm.anchors import build_family as build_llama_family  # noqa: E402
from esta.llm.stitch import StitchedLlama  # noqa: E402
from esta.llm.tuning import LlamaTuningConfig, TunableLlama, make_tunable as make_tunable_llama  # noqa: E402
from esta.runtime import write_json  # noqa: E402
from esta.train import pick_device  # noqa: E402
from esta.vit.evaluate import predict  # noqa: E402
from esta.vit.tuning import TuningConfig  # noqa: E402

LLAMA_YAML = ROOT / "config" / "llama.yaml"
SMOKE_YAML = ROOT / "config" / "smoke.yaml"

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from NVIDIA's datasheets, matched as a substring of
# torch.cuda.get_device_name in this order ("NVIDIA H100 80GB HBM3" is the SXM5 card).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 80GB HBM3", 989.0),
    ("H100 SXM", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)


@dataclass(frozen=True)
class GpuSettings:
    """Shapes, repeats and bounds of one run."""

    vit: Settings  # bench.common.Settings of the ViT part
    llama_family: str
    llama_batch: int  # sequences per step
    llama_seq: int  # tokens per sequence
    llama_warmup: int
    llama_reps: int
    max_batch_tries: int  # doublings of the batch at most
    max_batch_budget_s: float  # no doubling starts once the search has run this long
    workflow_run: bool  # run the smoke workflow to its target (else only `snakemake -n`)
    workflow_timeout_s: float


def settings(dry: bool) -> GpuSettings:
    if dry:
        # bench/run.py --quick's CPU settings; no warm-up, one timed repeat, four stitches in the all-stitches race
        vit = replace(SETTINGS[("cpu", True)], train_warmup=0, train_reps=1, all_timed=(0, 3, 4, 5), ckpt_batch=1)
        return GpuSettings(vit=vit, llama_family="tiny", llama_batch=2, llama_seq=64,
                           llama_warmup=1, llama_reps=2, max_batch_tries=1, max_batch_budget_s=10,
                           workflow_run=False, workflow_timeout_s=120)
    llm = yaml.safe_load(LLAMA_YAML.read_text())["llm"]
    return GpuSettings(vit=replace(CUDA, budget_s=30), llama_family="llama-7b-13b",
                       llama_batch=llm["train"]["batch_size"], llama_seq=llm["tokenizer"]["max_length"],
                       llama_warmup=2, llama_reps=5, max_batch_tries=5, max_batch_budget_s=120,
                       workflow_run=True, workflow_timeout_s=180)


# ---------------------------------------------------------------------------------------------
# The device


def peak_tflops(device_name: str) -> tuple[float, str]:
    """The card's dense bf16 peak and a note saying where it came from (NaN for an unknown card)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops, f"{device_name}: {tflops:g} TFLOP/s dense bf16 (datasheet, matched {key!r})"
    return math.nan, f"{device_name!r} is not in bench/gpu.py's peak table: MFU against the peak is NaN"


def device_info(device: torch.device) -> dict:
    """bench/run.py's machine description plus the driver, CUDA, the card and transformers."""
    info = dict(machine_info(device), transformers=version("transformers"), cuda=torch.version.cuda)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=round(props.total_memory / 2**30, 2), multiprocessors=props.multi_processor_count,
                    capability=f"{props.major}.{props.minor}", driver=driver_version(),
                    tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


def driver_version() -> str:
    """The NVIDIA driver as nvidia-smi reports it; else what torch knows (the CUDA it was built for)."""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
        if smi.returncode == 0 and smi.stdout.strip():
            return smi.stdout.split()[0]
    return f"unknown (no nvidia-smi); torch built for CUDA {torch.version.cuda}"


def peak_memory(fn, device: torch.device) -> float:
    """Bytes allocated at the peak of ``fn()`` on a GPU; NaN on the CPU (no allocator statistics)."""
    if device.type != "cuda":
        fn()
        return math.nan
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return float(torch.cuda.max_memory_allocated(device))


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules in ``dtype`` (HF and torch take the default dtype at construction)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


# ---------------------------------------------------------------------------------------------
# 1. ViT at the paper's shape


def vit_rows(st: Settings, device: torch.device, peak: tuple[float, str], checks: list[str]) -> list[Row]:
    cfgs = dict(pst=TuningConfig(mode="pst"), full=TuningConfig(mode="full"))
    flops = {name: step_flops(cfg, st.train_batch) for name, cfg in cfgs.items()}
    cpu = torch.device("cpu")

    # Memory first, one model on the device at a time.
    trainers, memory = {}, {}
    for name, cfg in cfgs.items():
        tr = make_trainer(cfg, st, device)
        tr.fill_state()
        if device.type == "cuda":
            tr.step()  # one-off allocations (cuBLAS workspace) out of the measured peak
        memory[name] = checkpoint_memory(tr, st.ckpt_batch, tr.memory())
        trainers[name] = tr.to(cpu) if device.type == "cuda" else tr
    pst, full = (trainers[n].to(device) for n in ("pst", "full"))

    steps = {}
    for ckpt in (False, True):
        for tr in (pst, full):
            tr.model.set_grad_checkpointing(ckpt)
        steps[ckpt] = race(pst.step, full.step, st.train_reps, st.train_warmup, device, st.budget_s)
    for tr in (pst, full):
        tr.model.set_grad_checkpointing(False)

    probe, probe_flops = matmul_probe(device, st.mm_size, st.mm_count)
    util = race(pst.step, probe, st.train_reps, 1, device, st.budget_s)
    mfu_probe = statistics.median((flops["pst"] / a) / (probe_flops / b) for a, b in zip(util.a, util.b))
    step_rate, probe_rate = flops["pst"] / util.med("a"), probe_flops / util.med("b")

    # All stitches of SN-Net's model (shared parameters, so prefixes can be reused); PST's model off the GPU.
    if device.type == "cuda":
        pst.to(cpu)
    prefix = [replace(r, benchmark=f"vit_{r.benchmark}") for r in bench_all_stitches(full.model, st, device, checks)]
    ids = list(range(full.model.net.num_stitches)) if st.all_timed is None else list(st.all_timed)
    x = images(st.all_batch, device)

    def reuse():
        with autocast(device):
            return predict(full.model, x, ids)

    reuse_s = statistics.median(timed(reuse, device) for _ in range(max(1, st.all_reps)))

    where = f"stitch {STITCH}, batch {st.train_batch}"
    rows = []
    for ckpt, sfx in ((False, ""), (True, "_ckpt")):
        pair, how = steps[ckpt], "checkpointed" if ckpt else "plain"
        mem = {n: memory[n]["ckpt" if ckpt else "plain"] for n in cfgs}
        parts = "; ".join(f"{n} [" + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in m.items()) + "] MiB"
                          for n, m in mem.items())
        mem_where = f"stitch {STITCH}, batch {st.ckpt_batch}, {how}"
        rows += [
            row(f"vit_pst_vs_full_step_time{sfx}", pair.ratio, "-" if ckpt else "<= 0.70", "ratio",
                f"PST {pair.med('a'):.4f} s, full {pair.med('b'):.4f} s, {where}, {how}{pair.noise}"),
            row(f"vit_pst_vs_full_step_memory{sfx}", mem["pst"]["total"] / mem["full"]["total"], "<= 0.5", "ratio",
                f"{mem_where}; {parts}"),
            row(f"vit_pst_step_time{sfx}", pair.med("a"), "-", "s", f"{where}, {how}"),
            row(f"vit_full_step_time{sfx}", pair.med("b"), "-", "s", f"{where}, {how}"),
            row(f"vit_pst_step_memory{sfx}", mem["pst"]["total"] / 2**20, "-", "MiB", mem_where),
            row(f"vit_full_step_memory{sfx}", mem["full"]["total"] / 2**20, "-", "MiB", mem_where),
        ]
    rate = f"PST step {step_rate / 1e12:.2f} TFLOP/s, {where}"
    return rows + [
        row("vit_pst_vs_full_step_flops", flops["pst"] / flops["full"], "-", "ratio",
            f"PST {flops['pst'] / 1e9:.1f} vs full {flops['full'] / 1e9:.1f} GFLOP fwd+bwd, {where}"),
        row("vit_pst_step_mfu_probe", mfu_probe, "-", "fraction",
            f"{rate} vs matmul probe {probe_rate / 1e12:.2f}; {len(util.a)} reps"),
        row("vit_pst_step_mfu_peak", step_rate / (peak[0] * 1e12), ">= 0.40", "fraction", f"{rate} vs {peak[1]}"),
        row("vit_pst_step_tflops", step_rate / 1e12, "-", "TFLOP/s", f"{where}; FLOPs counted on the meta device"),
        row("vit_matmul_probe_tflops", probe_rate / 1e12, "-", "TFLOP/s",
            f"{st.mm_count} x {st.mm_size}^3 matmuls ({'bf16' if device.type == 'cuda' else 'fp32'})"),
        *prefix,
        row("vit_all_stitches_reuse_time", reuse_s, "-", "s",
            f"{len(ids)} stitches of SN-Net's model, batch {st.all_batch}, prefixes reused"),
    ]


# ---------------------------------------------------------------------------------------------
# 2. Stitched LLaMA


@dataclass
class LlamaStep:
    """PST's model, AdamW and a fixed batch of tokens: one step of ``esta.train.train``."""

    model: TunableLlama
    opt: torch.optim.Optimizer
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # input_ids, attention_mask, labels
    stitch: int
    device: torch.device

    def loss(self) -> torch.Tensor:
        with autocast(self.device):
            return self.model.loss(self.batch, self.stitch)

    def step(self) -> None:
        optimizer_step(self.model, self.opt, self.loss(), self.stitch)

    def fill_state(self) -> None:
        fill_adamw_state(self.model, self.opt)

    def with_batch(self, batch: int) -> LlamaStep:
        ids = self.batch[0]
        vocab = self.model.net.anchors[0].config.vocab_size
        return replace(self, batch=tokens(batch, ids.shape[1], vocab, self.device))


def tokens(batch: int, seq: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Random ids, no padding, every token a label (the loss at its largest)."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    return ids, torch.ones_like(ids), ids.clone()


def stitch_params(net: StitchedLlama) -> dict[int, int]:
    """Parameters on each stitch's path (front embeddings, layers run, stitching layer, end norm and head)."""
    named = list(net.named_parameters())
    return {s.stitch_id: sum(p.numel() for n, p in named if net.on_path(n, s.stitch_id)) for s in net.table}


def params_str(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def llama_rows(gs: GpuSettings, device: torch.device, peak: tuple[float, str], st: Settings) -> list[Row]:
    llm = yaml.safe_load(LLAMA_YAML.read_text())["llm"]  # the paper-scale run's PST and optimizer
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    with torch.device(device), default_dtype(dtype):  # random weights made on the device: nothing to load
        net = StitchedLlama(build_llama_family(gs.llama_family), checkpointing=True)
    sync(device)
    build_s = time.perf_counter() - t0
    params = stitch_params(net)
    anchors = [s.stitch_id for s in net.table if s.is_anchor]
    middle = statistics.mean(params[a] for a in anchors)
    sid = min((s.stitch_id for s in net.table if not s.is_anchor), key=lambda i: abs(params[i] - middle))
    s = net.stitch(sid)

    model = make_tunable_llama(net, LlamaTuningConfig(**llm["pst"])).train()
    # Master weights: spec §11's precision policy (esta.llm.tuning) keeps every trainable tensor (LoRA,
    # stitch biases) in fp32 beside the bf16 anchors; the benchmark measures that step, so it checks it.
    dtypes = {p.dtype for p in model.trainable().values()}
    if dtypes != {torch.float32}:
        raise RuntimeError(f"the precision policy keeps trainables in fp32; got {dtypes}")
    n_trainable = sum(p.numel() for p in model.trainable().values())
    opt = torch.optim.AdamW(model.param_groups(llm["train"]["lr"], None, llm["train"]["weight_decay"]))
    vocab = net.anchors[0].config.vocab_size
    run = LlamaStep(model, opt, tokens(gs.llama_batch, gs.llama_seq, vocab, device), sid, device)
    run.fill_state()

    # Model FLOPs of forward + backward, counted on one sequence without checkpointing (no recomputation;
    # every op is linear in the batch at a fixed length) and scaled to the batch.
    one = run.with_batch(1)
    net.checkpointing = False
    flops = count_flops(lambda: one.loss().backward()) * gs.llama_batch
    net.checkpointing = True
    opt.zero_grad(set_to_none=True)
    del one

    for _ in range(gs.llama_warmup):
        run.step()
    mem = peak_memory(run.step, device)
    probe, probe_flops = matmul_probe(device, st.mm_size, st.mm_count)
    util = race(run.step, probe, gs.llama_reps, 0, device)
    step_s = util.med("a")
    mfu_probe = statistics.median((flops / a) / (probe_flops / b) for a, b in zip(util.a, util.b))
    best, best_mem, search = largest_batch(run, step_s, mem, gs, device)

    n_tok = gs.llama_batch * gs.llama_seq
    where = (f"stitch {sid} ({params_str(params[sid])} params: front {s.front} layers 0..{s.j}, end {s.end} "
             f"from layer {s.k}), batch {gs.llama_batch} x {gs.llama_seq} tokens, checkpointing on")
    precision = "bf16 anchors, fp32 trainable, bf16 autocast" if device.type == "cuda" else "fp32, no autocast"
    return [
        row("llama_build_time", build_s, "-", "s", f"{gs.llama_family}, random weights on {device} ({precision})"),
        row("llama_stitch_params", params[sid], "-", "params",
            f"stitch {sid}, nearest the anchors' mean {params_str(middle)}; anchors "
            + ", ".join(params_str(params[a]) for a in anchors)),
        row("llama_trainable_params", n_trainable, "-", "params", f"PST as llama.yaml's llm.pst: {llm['pst']}"),
        row("llama_step_time", step_s, "-", "s", f"{where}; {len(util.a)} reps"),
        row("llama_tokens_per_s", n_tok / step_s, "-", "tokens/s", where),
        row("llama_step_memory", mem / 1e9, "<= 80", "GB", f"torch.cuda.max_memory_allocated over one step, {where}"),
        row("llama_step_tflops", flops / step_s / 1e12, "-", "TFLOP/s",
            f"{flops / 1e9:.1f} GFLOP per step (model FLOPs, recomputation not counted)"),
        row("llama_step_mfu_probe", mfu_probe, "-", "fraction", f"vs {st.mm_count} x {st.mm_size}^3 matmul probe"),
        row("llama_step_mfu_peak", flops / step_s / (peak[0] * 1e12), "-", "fraction", f"vs {peak[1]}"),
        row("llama_max_batch", best, "-", "sequences", f"{search}; {gs.llama_seq} tokens each"),
        row("llama_max_batch_memory", best_mem / 1e9, "-", "GB", f"peak of one step at batch {best}"),
    ]


def largest_batch(run: LlamaStep, step_s: float, mem: float, gs: GpuSettings,
                  device: torch.device) -> tuple[int, float, str]:
    """Double the batch from the configured one (whose step took ``step_s`` and peaked at ``mem`` bytes) until
    a step raises ``torch.cuda.OutOfMemoryError``, at most ``max_batch_tries`` times and while
    ``max_batch_budget_s`` allows the next (about twice as long) step. Returns the largest batch whose step
    ran, its peak bytes and how the search ended."""
    best, best_mem = gs.llama_batch, mem
    t0, last_s, batch = time.perf_counter(), step_s, gs.llama_batch
    ended = f"bounded: no OOM within {gs.max_batch_tries} doublings"
    for _ in range(gs.max_batch_tries):
        if time.perf_counter() - t0 + 2 * last_s > gs.max_batch_budget_s:
            ended = f"bounded: the next doubling would pass the {gs.max_batch_budget_s:g} s budget"
            break
        batch *= 2
        trial, oom = run.with_batch(batch), False
        try:
            t = time.perf_counter()
            mem = peak_memory(trial.step, device)
            last_s = time.perf_counter() - t
        except torch.cuda.OutOfMemoryError:
            oom = True
        del trial  # the failed step's activations go with it
        run.opt.zero_grad(set_to_none=True)
        free(device)
        if oom:
            ended = f"batch {batch} ran out of memory"
            break
        best, best_mem = batch, mem
    return best, best_mem, f"{ended}, started at {gs.llama_batch}"


# ---------------------------------------------------------------------------------------------
# 3. The workflow's GPU path


def workflow_rows(gs: GpuSettings, out: Path) -> list[Row]:
    smoke = yaml.safe_load(SMOKE_YAML.read_text())
    target = f"results/esta/default/{smoke['tasks'][0]}/seed{smoke['seeds'][0]}/test_accuracy.csv"
    exe = Path(sys.executable).with_name("snakemake")
    exe = str(exe) if exe.exists() else shutil.which("snakemake")
    name = "workflow_deployed_on_cuda" if gs.workflow_run else "workflow_dry_jobs"
    if exe is None:
        return [row(name, math.nan, ">= 1" if gs.workflow_run else "-", "fraction" if gs.workflow_run else "jobs",
                    f"skipped: Snakemake is not installed on this machine ({sys.executable}); nothing of part 3 ran",
                    met=False)]
    with tempfile.TemporaryDirectory(prefix="esta-gpu-workflow-") as tmp:
        work = Path(tmp)
        for link in ("config.yaml", "config", "esta", "workflow"):  # a checkout, as tests/conftest.py makes
            (work / link).symlink_to(ROOT / link)
        cmd = [exe, "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--directory", str(work),
               "--configfile", str(SMOKE_YAML), "--config", "device=cuda", "--cores", str(os.cpu_count() or 1),
               *([] if gs.workflow_run else ["-n"]), "--", target]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        log = out / "workflow.log"  # written as it runs: a run past its timeout leaves its output there
        with open(log, "w") as f:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=work, stdout=f, stderr=subprocess.STDOUT, timeout=gs.workflow_timeout_s,
                                  env=env)
            wall = time.perf_counter() - t0
        text = log.read_text()
        if proc.returncode != 0:
            raise RuntimeError(f"snakemake exited {proc.returncode} (workflow.log):\n{text[-3000:]}")
        if not gs.workflow_run:
            jobs = re.search(r"^total\s+(\d+)\s*$", text, re.MULTILINE)
            if jobs is None:
                raise RuntimeError(f"no job count in snakemake -n's output (workflow.log):\n{text[-2000:]}")
            return [row(name, int(jobs.group(1)), "-", "jobs",
                        f"snakemake -n of smoke.yaml with device=cuda to {target} ({wall:.1f} s); the run needs a GPU")]
        shutil.copy(work / target, out / "workflow_test_accuracy.csv")
    table = pd.read_csv(out / "workflow_test_accuracy.csv")
    on_cuda = float((table["device"] == "cuda").mean())
    names = sorted(set(table["device_name"].astype(str)))
    return [
        row("workflow_smoke_time", wall, "-", "s", f"smoke.yaml with device=cuda to {target}, from scratch"),
        row(name, on_cuda, ">= 1", "fraction",
            f"{len(table)} deployed stitches; device {sorted(set(table['device']))}, {names}, "
            f"dtype {sorted(set(table['dtype']))}"),
    ]


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny shapes, snakemake -n (tests)")
    parser.add_argument("out", type=Path, help="folder for gpu.csv, gpu.json and the workflow's table")
    args = parser.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        parser.error("no GPU: torch.cuda.is_available() is False (use --dry on a CPU)")
    device = torch.device("cpu") if args.dry else pick_device("cuda")  # pick_device turns TF32 on
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gs = settings(args.dry)
    info = device_info(device)
    peak = peak_tflops(info["device_name"])
    print(f"# {info['device_name']}, driver {info.get('driver', '-')}, torch {info['torch']}, "
          f"{'dry' if args.dry else 'full'} run -> {args.out}", flush=True)

    t0 = time.perf_counter()
    rows: list[Row] = []
    checks: list[str] = []
    parts = {
        "vit": lambda: vit_rows(gs.vit, device, peak, checks),
        "llama": lambda: llama_rows(gs, device, peak, gs.vit),
        "workflow": lambda: workflow_rows(gs, args.out),
    }
    status = {}
    for name, part in parts.items():
        start = time.perf_counter()
        try:
            new = part()
            status[name] = dict(ok=True)
        except Exception:  # noqa: BLE001 - recorded and printed, exit status 1: one lease runs every part
            new = []
            status[name] = dict(ok=False, error=traceback.format_exc())
            print(status[name]["error"], file=sys.stderr, flush=True)
        status[name]["wall_s"] = round(time.perf_counter() - start, 1)
        free(device)
        for r in new:
            mark = "-" if r.target == "-" else ("met" if r.met else "MISSED")
            print(f"{r.benchmark:34s} {r.value:11.4g} {r.unit:9s} target {r.target:8s} {mark:6s} {r.note}")
        print(f"#   {name}: {status[name]['wall_s']} s ({time.perf_counter() - t0:.0f} s elapsed)", flush=True)
        rows += new
        write_csv(rows, args.out / "gpu.csv")
        run = dict(dry=args.dry, settings=asdict(gs), stitch_vit=STITCH, peak_bf16_tflops=peak[0], peak_note=peak[1],
                   checks_passed=checks, parts=status, wall_s=round(time.perf_counter() - t0, 1),
                   notes={r.benchmark: r.note for r in rows})
        write_json(args.out / "gpu.json", dict(machine=info, run=run))
    failed = [n for n, s in status.items() if not s["ok"]]
    print(f"# {len(rows)} rows -> {args.out / 'gpu.csv'} in {time.perf_counter() - t0:.0f} s"
          + (f"; FAILED parts: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
