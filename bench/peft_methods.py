# NB: not "peft.py": bench/ is first on sys.path when bench/run.py runs, and would shadow peft.
"""PST on each PEFT technique (``esta.peft.method``) against SN-Net's full fine-tuning: step time and
memory at the paper's shape (ViT-Ti/S/B, stitch 56), as ``bench.training`` measures LoRA's.

For DoRA, IA³, Adapter and AdaptFormer (LoRA is ``pst_vs_full_*`` in ``bench.training``), with every
trainable parameter given AdamW state first:

- ``<method>_vs_full_step_time``: median of paired ABBA repeats of t(method) / t(full), the same
  step (forward, backward, SNIP importance, AdamW) and batch as ``pst_vs_full_step_time``.
- ``<method>_vs_full_step_memory``: the memory of a step as ``bench.training`` counts it (CUDA peak,
  or on CPU parameters + gradients + AdamW state + tensors saved for backward) over full's.
- ``<method>_trainable_params``: what the method trains, stitch biases and heads included.

Informational (target "-"): the paper reports similar accuracy for the techniques, not a speed or
memory bound for each; DoRA recomputes the weight norm of every wrapped linear in each step.
"""

from __future__ import annotations

from bench.common import STITCH, Row, Settings, race, row
from esta.vit.tuning import TuningConfig

__all__ = ["METHODS", "peft_rows"]

METHODS = ("dora", "ia3", "adapter", "adaptformer")


def peft_rows(full, full_memory: dict, st: Settings, device, make_trainer) -> list[Row]:
    """Rows for every method of ``METHODS`` against the ``full`` trainer (``bench.training.Trainer``)."""
    rows = []
    where = f"stitch {STITCH}, batch {st.train_batch}"
    for method in METHODS:
        tr = make_trainer(TuningConfig(mode="pst", peft=method), st, device)
        tr.fill_state()
        if device.type == "cuda":
            tr.step()  # one-off allocations out of the measured peak
        mem = tr.memory()
        steps = race(tr.step, full.step, st.train_reps, st.train_warmup, device, st.budget_s)
        n = sum(p.numel() for p in tr.model.trainable().values())
        rows += [
            row(f"{method}_vs_full_step_time", steps.ratio, "-", "ratio",
                f"{method} {steps.med('a'):.3f} s, full {steps.med('b'):.3f} s, {where}{steps.noise}"),
            row(f"{method}_vs_full_step_memory", mem["total"] / full_memory["total"], "-", "ratio",
                f"{method} {mem['total'] / 2**20:.0f} MiB, full {full_memory['total'] / 2**20:.0f} MiB, {where}"),
            row(f"{method}_trainable_params", n, "-", "params", "PEFT + stitch biases + heads"),
        ]
        del tr
    return rows
