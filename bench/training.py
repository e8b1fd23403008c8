"""Training-step benchmarks: ESTA's PST against SN-Net's full fine-tuning, and utilisation.

Stitch 56 (ViT-S -> ViT-B (6,7), 10.0 GMACs, mid-depth), same batch for both methods. A step is the
one of ``esta.train``: forward, zero_grad, backward, SNIP importance, AdamW step. Before timing,
every trainable parameter is given AdamW state (one step on zero gradients), as in steady-state
training where every stitch has been sampled; then warm-up steps on the stitch.

- ``pst_vs_full_step_time``: median over paired, interleaved repeats of t(PST) / t(full).
- ``pst_vs_full_step_flops``: FLOPs of forward + backward counted by ``FlopCounterMode`` on the
  meta device (attention unfused so its matmuls are seen). Informational: PST freezes weights, so
  the weight-gradient matmuls (one third of a step) are skipped, but activation gradients still
  flow back through every block to reach the LoRA and bias parameters of early blocks, so the floor
  is ~2/3 (forward + input gradients over forward + input + weight gradients).
- ``pst_vs_full_step_memory``: on CUDA, ``torch.cuda.max_memory_allocated`` over one step with only
  that model on the device. On CPU (no allocator statistics) it is the sum of: bytes of every
  parameter of the model, the gradients present after backward, the AdamW state (exp_avg,
  exp_avg_sq, step), and the tensors autograd saves for backward (counted with
  ``torch.autograd.graph.saved_tensors_hooks``, de-duplicated by storage, parameters excluded). At
  batch 4 parameters and AdamW state dominate; ``pst_vs_full_step_memory_b64`` (CPU, informational)
  repeats the count at the paper's batch 64, where saved activations dominate: PST still saves what
  activation gradients need (attention q/k/v/out, GELU inputs, LayerNorm inputs, LoRA inputs) and
  drops only the inputs kept for weight gradients. ``bench.checkpointing`` measures what gradient
  checkpointing changes about that.
- ``train_mfu_<device>``: FLOP/s of the PST step (FLOPs counted as above, optimizer not counted)
  over the FLOP/s of a square matmul probe (fp32 2048 on CPU, bf16 8192 on CUDA); the step and the
  probe are raced against each other, the median of the per-repeat ratios taken.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from bench.checkpointing import checkpoint_memory, checkpoint_rows
from bench.peft_methods import peft_rows
from bench.common import (
    FAMILY,
    NUM_CLASSES,
    STITCH,
    Row,
    Settings,
    autocast,
    count_flops,
    images,
    labels,
    meta_model,
    race,
    row,
    sync,
)
from esta.sampling import snip_importance
from esta.vit.anchors import build_family
from esta.vit.stitch import StitchedViT
from esta.vit.tuning import TunableViT, TuningConfig, make_tunable


def optimizer_step(model, opt, loss: torch.Tensor, stitch: int) -> None:
    """The rest of a step of ``esta.train.train`` after the forward: zero_grad, backward, the
    stitch's SNIP importance, AdamW."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    snip_importance(model.importance_params(stitch))
    opt.step()


def fill_adamw_state(model, opt) -> None:
    """Give every trainable parameter AdamW state, as once every stitch has been sampled."""
    for p in model.trainable().values():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


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
        optimizer_step(self.model, self.opt, self.loss(), STITCH)

    def fill_state(self) -> None:
        """Give every trainable parameter AdamW state, as once every stitch has been sampled."""
        fill_adamw_state(self.model, self.opt)

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
    trainers, memory, ckpt_memory = {}, {}, {}
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
        ckpt_memory[name] = checkpoint_memory(tr, st.ckpt_batch, memory[name])
        trainers[name] = tr.to(torch.device("cpu")) if device.type == "cuda" else tr
    pst, full = (trainers[n].to(device) for n in ("pst", "full"))

    steps = race(pst.step, full.step, st.train_reps, st.train_warmup, device, st.budget_s)
    # the other PEFT techniques against the same full trainer (bench.peft_methods); PST's model off the device
    if device.type == "cuda":
        pst.to(torch.device("cpu"))
    peft = peft_rows(full, memory["full"], st, device, make_trainer)
    pst.to(device)
    del trainers, full
    ckpt_rows = checkpoint_rows(pst, ckpt_memory, st, device)

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
        *ckpt_rows,
        *peft,
    ]
